"""train.val_fraction: validation patients inside a fold's train split, and the epoch they choose.

Real demo shards, real DeepSpeed engines: the split is by patient and disjoint from the test
patients, deterministic for a seed; 0 trains exactly as without the key; the chosen epoch is the
argmax of the recorded curve and the test predictions are those of that epoch's weights; a
resumed fold chooses as an uninterrupted one; 2 gloo ranks choose as 1 rank.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from hpc_pgo.config import compose
from hpc_pgo.data.folds import open_fold
from hpc_pgo.data.loader import make_loader
from hpc_pgo.data.standardizer import Standardizer
from hpc_pgo.errors import PgoError
from hpc_pgo.train.fold import FoldInputs, train_fold
from hpc_pgo.train.validation import choose_epoch, validation_patients
from tests.train.conftest import checkpointed, fold_config, train_fold_on_two_ranks

# genomic only, 6 epochs of batch 16: fast, and long enough for the curve to have a maximum
GENOMIC = ("model=genomic", "train.epochs=6", "train.batch_size=16", "train.val_fraction=0.25")


def _events(shards) -> dict[str, int]:
    return {p: r["event"] for p, r in open_fold(shards, 0).manifest["patients"].items()}


# --------------------------------------------------------------------------- the split


def test_split_is_by_patient_stratified_disjoint_from_test_and_seeded(small_shards):
    data = open_fold(small_shards, 0)
    events = _events(small_shards)
    held = validation_patients(data.train, events, 0.25, seed=0, fold=0)
    assert held == tuple(sorted(held)) and set(held) < set(data.train)
    assert not set(held) & set(data.test)
    for stratum in (0, 1):  # each event stratum held out in proportion
        members = [p for p in data.train if events[p] == stratum]
        assert sum(events[p] == stratum for p in held) == round(0.25 * len(members))
    assert validation_patients(data.train, events, 0.25, seed=0, fold=0) == held
    assert validation_patients(data.train, events, 0.25, seed=1, fold=0) != held
    assert validation_patients(data.train, events, 0.25, seed=0, fold=1) != held
    assert validation_patients(data.train, events, 0.0, seed=0, fold=0) == ()

    # the loader: "train" leaves the validation patients out, "val" serves every unit of them
    split = open_fold(small_shards, 0, held)
    assert split.val == held and set(split.train) == set(data.train) - set(held)
    std = Standardizer.fit(small_shards, split.train, ["cnv"])
    common = dict(groups=["cnv"], image_size=None, standardizer=std, shuffle_buffer=1)
    val = [k for b in make_loader(small_shards, 0, "val", batch_size=8, holdout=held, **common)
           for k in b["key"]]  # fmt: skip
    assert len(set(val)) == len(val) == 2 * len(held)  # every unit (2 per patient) once
    assert sorted(key.split("__")[0] for key in val) == sorted(list(held) * 2)
    train = make_loader(small_shards, 0, "train", batch_size=8, holdout=held, **common)
    assert not {key.split("__")[0] for key in train.plan.keys} & set(held)
    with pytest.raises(PgoError, match="fitted on other patients"):  # stats of all train patients
        make_loader(
            small_shards, 0, "train", batch_size=8, holdout=held, groups=["cnv"],
            image_size=None, standardizer=Standardizer.fit(small_shards, data.train, ["cnv"]),
        )  # fmt: skip


def test_split_refuses_what_it_cannot_do(small_shards):
    data = open_fold(small_shards, 0)
    events = _events(small_shards)
    with pytest.raises(PgoError, match=r"train.val_fraction=1.0 is not valid; valid: .*\[0, 1\)"):
        validation_patients(data.train, events, 1.0, seed=0, fold=0)
    with pytest.raises(PgoError, match="holds out no death"):
        validation_patients(data.train, dict.fromkeys(data.train, 0), 0.25, seed=0, fold=0)
    with pytest.raises(PgoError, match="is not a train patient of fold 0"):
        open_fold(small_shards, 0, [data.test[0]])
    message = str(pytest.raises(PgoError, compose, ["train.val_fraction=1"]).value)
    assert "train.val_fraction=1 is not valid; valid: a number in [0, 1)" in message


def test_choose_epoch_is_the_first_argmax_and_skips_missing_scores():
    assert choose_epoch([0.5, 0.7, 0.6, 0.7]) == 1
    assert choose_epoch([None, 0.55, float("nan"), 0.5]) == 1
    assert choose_epoch([None, float("nan")]) == 1  # nothing to compare: the final weights
    with pytest.raises(PgoError):
        choose_epoch([])


# --------------------------------------------------------------------------- the fold


@pytest.mark.slow
def test_val_fraction_zero_trains_exactly_as_without_the_key(small_shards, tmp_path):
    cfg = fold_config(small_shards, *GENOMIC[:-1], "train.val_fraction=0")
    bare = OmegaConf.to_container(cfg)
    del bare["train"]["val_fraction"]  # a config written before the key existed
    zero = train_fold(cfg, 0, tmp_path / "zero")
    absent = train_fold(OmegaConf.create(bare), 0, tmp_path / "absent")
    a, b = (tmp_path / d / "fold_0" / "predictions.csv" for d in ("zero", "absent"))
    assert a.read_bytes() == b.read_bytes()
    assert zero["loss_per_epoch"] == absent["loss_per_epoch"]
    assert "chosen_epoch" not in zero and "val_cindex_per_epoch" not in zero
    assert pd.read_csv(a)["patient"].nunique() == len(open_fold(small_shards, 0).test)


@pytest.mark.slow
def test_chosen_epoch_is_the_argmax_and_its_weights_give_the_predictions(small_shards, tmp_path):
    cfg = fold_config(small_shards, *GENOMIC)
    metrics = train_fold(cfg, 0, tmp_path / "run")
    out = tmp_path / "run" / "fold_0"
    curve = metrics["val_cindex_per_epoch"]
    assert len(curve) == 6 and all(c is None or 0 <= c <= 1 for c in curve)
    finite = [c for c in curve if c is not None]
    assert metrics["chosen_epoch"] == curve.index(max(finite)) == choose_epoch(curve)
    assert metrics["val_cindex"] == max(finite)
    assert metrics["chosen_step"] == 4 * (metrics["chosen_epoch"] + 1)  # 4 steps per epoch
    assert json.loads((out / "metrics.json").read_text()) == metrics

    data = FoldInputs.open(cfg, 0).data
    assert metrics["n_val_patients"] == len(data.val) == 12 and metrics["n_val_units"] == 24
    assert metrics["n_val_events"] == sum(_events(small_shards)[p] for p in data.val) >= 1
    assert set(data.val) <= set(open_fold(small_shards, 0).train) and not set(data.val) & set(
        data.test
    )
    preds = pd.read_csv(out / "predictions.csv")
    assert set(preds["patient"]) == set(data.test)  # only test patients are predicted

    # the same fold stopped right after the chosen epoch: its weights give the predictions
    stop = f"train.stop_after_steps={metrics['chosen_step']}"
    train_fold(fold_config(small_shards, *GENOMIC, stop), 0, tmp_path / "short")
    at_chosen = _checkpoint_predictions(cfg, tmp_path / "short" / "fold_0")
    final = _checkpoint_predictions(cfg, out)
    by_unit = preds.set_index(preds["patient"] + "__" + preds["unit"])["hazard"]
    np.testing.assert_allclose(by_unit[at_chosen.index], at_chosen, rtol=1e-5, atol=1e-6)
    if metrics["chosen_epoch"] < 5:  # not the final weights
        assert np.abs(by_unit[final.index] - final).max() > 1e-4


def _checkpoint_predictions(cfg, out) -> pd.Series:
    """theta of every test unit of fold 0 from the module weights of out/checkpoints/latest."""
    inputs, loader = checkpointed(cfg, out, 0)
    keys, theta = [], []
    with torch.no_grad():
        for batch in loader:
            keys += list(batch["key"])
            theta += inputs.model(batch)["theta"].double().tolist()
    return pd.Series(theta, index=keys)


@pytest.mark.slow
def test_resumed_fold_chooses_as_an_uninterrupted_one(small_shards, tmp_path):
    whole = train_fold(fold_config(small_shards, *GENOMIC), 0, tmp_path / "whole")
    parts = tmp_path / "parts"
    for budget in (5, 9):  # mid-epoch stops, across epoch ends (and so across validations)
        stopped = train_fold(
            fold_config(small_shards, *GENOMIC, f"train.stop_after_steps={budget}"), 0, parts
        )
        assert stopped["status"] == "stopped"
    resumed = train_fold(fold_config(small_shards, *GENOMIC), 0, parts)
    for key in ("val_cindex_per_epoch", "chosen_epoch", "chosen_step", "cindex"):
        assert resumed[key] == whole[key], key
    a, b = (d / "fold_0" / "predictions.csv" for d in (tmp_path / "whole", parts))
    assert a.read_bytes() == b.read_bytes() and resumed["calls"] == 3


@pytest.mark.slow
def test_two_ranks_choose_the_epoch_of_one(small_shards, tmp_path):
    # as tests/train/test_demo.py: no dropout, no shuffle buffer, so the global batches (and the
    # steps) are the same for 1 and 2 ranks; the validation rows are gathered on every rank
    args = (*GENOMIC, "model.genomic.snn.dropout=0.0", "train.shuffle_buffer=1")
    one = train_fold(fold_config(small_shards, *args), 0, tmp_path / "one")
    train_fold_on_two_ranks(
        fold_config(small_shards, *args, "cluster.tasks_per_node=2"), tmp_path / "two", tmp_path
    )
    two = json.loads((tmp_path / "two" / "fold_0" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["chosen_epoch"] == one["chosen_epoch"]
    np.testing.assert_allclose(two["val_cindex_per_epoch"], one["val_cindex_per_epoch"], atol=1e-9)
    a = pd.read_csv(tmp_path / "one" / "fold_0" / "predictions.csv")
    b = pd.read_csv(tmp_path / "two" / "fold_0" / "predictions.csv")
    assert (a["hazard"] - b["hazard"]).abs().max() < 1e-5
