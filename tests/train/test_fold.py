"""train_fold on real shards with real DeepSpeed: outputs, completion, resume, refusals, NaN."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hpc_pgo.data.cli import main as pgo_shards
from hpc_pgo.data.folds import open_fold
from hpc_pgo.errors import PgoError
from hpc_pgo.survival import fold_cindex, read_predictions
from hpc_pgo.train.fold import MODULATION_COLUMNS, request_stop, train_fold
from tests.train.conftest import checkpointed, fold_config

# Small and fast: the demo preset's CNN at 32 px, two epochs of 6 steps (batch 16 of 96 units).
SMALL = ("model=fusion_small", "train.epochs=2", "train.batch_size=16")


@pytest.mark.slow
def test_fold_writes_its_outputs_and_a_complete_fold_is_not_trained_again(small_shards, tmp_path):
    cfg = fold_config(small_shards, *SMALL)
    metrics = train_fold(cfg, 1, tmp_path)
    out = tmp_path / "fold_1"

    data = open_fold(small_shards, 1)
    preds = read_predictions(out / "predictions.csv")
    assert list(pd.read_csv(out / "predictions.csv").columns) == [
        "patient", "unit", "hazard", "time", "event", "hazard_genomic", "hazard_image",
    ]  # fmt: skip
    assert len(preds) == data.units("test") == 24  # every test unit exactly once
    assert set(preds["patient"]) == set(data.test)
    assert metrics["cindex"] == pytest.approx(fold_cindex(preds))
    # the concat head's parts (Eq. 1): theta = theta^G + theta^P, each part scored alone
    np.testing.assert_allclose(
        preds["hazard"], preds["hazard_genomic"] + preds["hazard_image"], rtol=0, atol=1e-6
    )
    for part in ("genomic", "image"):
        alone = fold_cindex(preds.assign(hazard=preds[f"hazard_{part}"]))
        assert metrics[f"cindex_{part}"] == pytest.approx(alone)
        per_epoch = metrics["train_cindex_per_epoch"][part]
        assert len(per_epoch) == 2 and all(c is None or 0 <= c <= 1 for c in per_epoch)
    assert metrics["cindex_genomic"] != pytest.approx(metrics["cindex_image"])
    _assert_branch_parts_are_the_heads_blocks(cfg, tmp_path, preds)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["steps"] == 12 and len(metrics["loss_per_epoch"]) == 2
    assert metrics["status"] == "complete" and metrics["wall_time_s"] > 0

    log = pd.read_csv(out / "modulation.csv")
    assert tuple(log.columns) == MODULATION_COLUMNS
    assert log["step"].tolist() == list(range(1, 13)) and log["epoch"].tolist() == [0] * 6 + [1] * 6
    assert log[["rho_g", "rho_p", "k_g", "k_p"]].notna().all().all()  # concat + rho: logged
    assert log[["cindex_g", "cindex_p"]].stack().between(0, 1).all()
    assert log["cindex_g"].notna().sum() >= 10  # NaN only for a batch without a comparable pair
    assert ((log["k_g"] < 1) | (log["k_p"] < 1)).any()  # the dominant modality was slowed
    assert (log["rho_g"] * log["rho_p"]).round(6).eq(1).all()  # rho^P = 1 / rho^G
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "latest").read_text() == "step00000012"
    assert (out / "standardizer.json").is_file()

    before = (out / "modulation.csv").stat().st_mtime_ns
    assert train_fold(cfg, 1, tmp_path) == metrics  # complete: returned, not retrained
    assert (out / "modulation.csv").stat().st_mtime_ns == before


def _assert_branch_parts_are_the_heads_blocks(cfg, run_dir, preds: pd.DataFrame) -> None:
    """hazard_genomic / hazard_image recomputed from the final checkpoint's weights as
    W^G G + b/2 and W^P P + b/2: a swap of the two columns (or of the blocks) fails here."""
    from torch.nn import functional as F

    inputs, loader = checkpointed(cfg, run_dir / "fold_1", 1)
    model = inputs.model
    by_unit = preds.set_index(preds["patient"] + "__" + preds["unit"])
    with torch.no_grad():
        for batch in loader:
            features = {m: enc(batch) for m, enc in model.encoders.items()}
            half_bias = model.fusion.linear.bias / 2
            for part, column in (("genomic", "hazard_genomic"), ("image", "hazard_image")):
                block = model.fusion.weight_block(part)
                want = (F.linear(features[part], block) + half_bias).squeeze(-1)
                got = by_unit.loc[list(batch["key"]), column].to_numpy()
                np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resumed_fold_gives_the_predictions_of_an_uninterrupted_one(small_shards, tmp_path):
    # images, dropout (SNN AlphaDropout 0.25) and shuffling; stopped mid-epoch twice
    args = SMALL
    whole = train_fold(fold_config(small_shards, *args), 0, tmp_path / "whole")

    parts = tmp_path / "parts"
    first = train_fold(fold_config(small_shards, *args, "train.stop_after_steps=4"), 0, parts)
    assert first == {"status": "stopped", "fold": 0, "step": 4, "epoch": 0}
    assert not (parts / "fold_0" / "metrics.json").exists()
    second = train_fold(fold_config(small_shards, *args, "train.stop_after_steps=5"), 0, parts)
    assert second == {"status": "stopped", "fold": 0, "step": 9, "epoch": 1}
    resumed = train_fold(fold_config(small_shards, *args), 0, parts)

    expect = pd.read_csv(tmp_path / "whole" / "fold_0" / "predictions.csv")
    got = pd.read_csv(parts / "fold_0" / "predictions.csv")
    pd.testing.assert_frame_equal(got, expect, check_exact=True)
    assert resumed["cindex"] == whole["cindex"] and resumed["calls"] == 3
    pd.testing.assert_frame_equal(
        pd.read_csv(parts / "fold_0" / "modulation.csv"),
        pd.read_csv(tmp_path / "whole" / "fold_0" / "modulation.csv"),
        check_exact=True,
    )


@pytest.mark.slow
def test_checkpoint_of_another_config_is_refused_naming_the_key(small_shards, tmp_path):
    args = (*SMALL, "model=genomic")
    train_fold(fold_config(small_shards, *args, "train.stop_after_steps=2"), 0, tmp_path)
    with pytest.raises(PgoError, match=r"train\.lr: 0\.002 -> 0\.01") as caught:
        train_fold(fold_config(small_shards, *args, "train.lr=0.01"), 0, tmp_path)
    assert "checkpoint" in str(caught.value) and "\n" not in str(caught.value)
    # budgets and workers are not part of what a fold computes: resuming with others is fine
    done = train_fold(fold_config(small_shards, *args, "train.num_workers=1"), 0, tmp_path)
    assert done["status"] == "complete" and done["calls"] == 2


@pytest.mark.slow
def test_nan_loss_stops_the_fold_and_keeps_the_last_good_checkpoint(small_shards, tmp_path):
    cfg = fold_config(
        small_shards, *SMALL, "model=genomic", "train.lr=1e30", "train.steps_per_checkpoint=1"
    )
    with pytest.raises(PgoError, match=r"training loss is (nan|inf)") as caught:
        train_fold(cfg, 0, tmp_path)
    out = tmp_path / "fold_0"
    assert "training loss is" in (out / "error.txt").read_text()
    assert not (out / "metrics.json").exists() and not (out / "predictions.csv").exists()
    tag = (out / "checkpoints" / "latest").read_text()
    bad_step = int(str(caught.value).split("step ")[1].split(" ")[0])
    assert tag == f"step{bad_step:08d}"  # saved after the last finite step, never after the NaN
    # the checkpoint loads into a fresh engine and holds finite weights
    from hpc_pgo.engine import build_engine, setup_distributed
    from hpc_pgo.train.fold import FoldInputs

    model = FoldInputs.open(cfg, 0).model
    engine = build_engine(model, cfg, steps_per_epoch=6, dist_env=setup_distributed())
    state = engine.load(out / "checkpoints")
    assert engine.global_step == bad_step and state["fold"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_shard_set_without_the_models_fields_is_refused_before_training(small_shards, tmp_path):
    omics_only = tmp_path / "omics_only"
    spec = tmp_path / "cohort"
    assert pgo_shards(
        ["demo", "--out", str(tmp_path / "tmp_demo"), "--cohort-dir", str(spec), "--patients", "40",
         "--image-size", "32", "--no-progress", "--workers", "1"]
    ) == 0  # fmt: skip
    assert pgo_shards(
        ["build", "--spec", str(spec / "cohort.yaml"), "--no-images", "--out", str(omics_only),
         "--no-progress", "--workers", "1"]
    ) == 0  # fmt: skip
    cfg = fold_config(omics_only, *SMALL)  # fusion: needs images the shard set lacks
    with pytest.raises(PgoError, match=r"lacks field 'image' needed by the image modality"):
        train_fold(cfg, 0, tmp_path / "run")
    assert not (tmp_path / "run" / "fold_0" / "checkpoints").exists()
    assert "lacks field 'image'" in (tmp_path / "run" / "fold_0" / "error.txt").read_text()


@pytest.mark.slow
def test_time_budget_and_stop_request_checkpoint_after_the_current_step(small_shards, tmp_path):
    args = (*SMALL, "model=genomic")
    timed = train_fold(
        fold_config(small_shards, *args, "train.stop_after_minutes=1e-6"), 0, tmp_path
    )
    assert timed == {"status": "stopped", "fold": 0, "step": 1, "epoch": 0}
    request_stop()  # what a launcher's signal handler calls before a time limit
    asked = train_fold(fold_config(small_shards, *args), 0, tmp_path)
    assert asked == {"status": "stopped", "fold": 0, "step": 2, "epoch": 0}
    assert (tmp_path / "fold_0" / "checkpoints" / "latest").read_text() == "step00000002"
    done = train_fold(fold_config(small_shards, *args), 0, tmp_path)  # the request was consumed
    assert done["status"] == "complete" and done["calls"] == 3 and done["steps"] == 12
