"""A real fold of model=fusion_abmil (genomic + attention-MIL over frozen tile features, rho
balancing) on 2 gloo DeepSpeed ranks: its outputs, and a resumed fold's byte-identical outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpc_pgo.data.cli import main as pgo_shards
from hpc_pgo.data.folds import open_fold
from hpc_pgo.survival import read_predictions
from tests.train.conftest import build_demo, fold_config, train_fold_on_two_ranks

# tiny: 24 patients x 3 ROIs; 2 ranks x 2 patients per step, 2 epochs of 4 steps; bags capped at
# 2 of the 3 tiles in training (all 3 at test); dropout on (tile MLP 0.25, SNN 0.25)
ARGS = (
    "model=fusion_abmil", "train.epochs=2", "train.batch_size=4", "cluster.tasks_per_node=2",
    "model.image.bag.hidden=8", "model.image.bag.attention=4", "model.image.out=8",
    "model.image.bag.max_tiles=2", "model.genomic.mlp_b.hidden=16",
)  # fmt: skip


@pytest.fixture(scope="module")
def bag_shards(tmp_path_factory) -> Path:
    """The demo simulator's shards with the side-car of `pgo-shards embed-tiles`: T2T-ViT-7
    (random init) features of every ROI, at the tiles' 32 px."""
    out = build_demo(
        tmp_path_factory.mktemp("bag_fold") / "demo", "--patients", "24", "--rois", "3",
        "--image-size", "32",
    )  # fmt: skip
    embed = ["embed-tiles", str(out), "--arch", "t2t_vit_7", "--input-size", "32", "--no-progress"]
    assert pgo_shards(embed) == 0
    return out


@pytest.mark.slow
def test_fusion_abmil_fold_on_two_ranks_and_its_resume(bag_shards, tmp_path):
    cfg = fold_config(bag_shards, *ARGS)
    assert cfg.balance.mode == "rho" and cfg.model.image.encoder == "abmil"
    train_fold_on_two_ranks(cfg, tmp_path / "whole", tmp_path)
    fold = tmp_path / "whole" / "fold_0"
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 8

    modulation = pd.read_csv(fold / "modulation.csv")
    assert len(modulation) == 8
    assert np.isfinite(modulation[["rho_g", "rho_p", "loss"]].to_numpy()).all()
    np.testing.assert_allclose(modulation["rho_g"] * modulation["rho_p"], 1.0)

    test = sorted(open_fold(bag_shards, 0).test)
    predictions = read_predictions(fold / "predictions.csv")
    assert sorted(predictions["patient"]) == test and set(predictions["unit"]) == {"bag"}
    assert metrics["n_test_patients"] == metrics["n_test_units"] == len(test)
    np.testing.assert_allclose(
        predictions["hazard"],
        predictions["hazard_genomic"] + predictions["hazard_image"],
        atol=1e-6,
    )
    assert predictions["hazard_image"].nunique() == len(test)  # the bags differ, so does P

    attention = pd.read_csv(fold / "attention.csv")
    manifest = json.loads((bag_shards / "manifest.json").read_text())
    assert sorted(attention["patient"].unique()) == test
    assert len(attention) == sum(manifest["patients"][p]["units"] for p in test)  # every tile
    sums = attention.groupby("patient")["attention"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-6)
    assert (attention["attention"] > 0).all()
    assert all(
        u.startswith(f"{p}_") for p, u in zip(attention["patient"], attention["unit"], strict=True)
    )

    # stopped after 3 steps (mid-epoch 0), then continued: the same bytes
    parts = tmp_path / "parts"
    train_fold_on_two_ranks(
        fold_config(bag_shards, *ARGS, "train.stop_after_steps=3"), parts, tmp_path
    )
    assert not (parts / "fold_0" / "metrics.json").exists()
    assert (parts / "fold_0" / "checkpoints" / "latest").is_file()
    train_fold_on_two_ranks(fold_config(bag_shards, *ARGS), parts, tmp_path)
    for name in ("predictions.csv", "attention.csv", "modulation.csv"):
        assert (parts / "fold_0" / name).read_bytes() == (fold / name).read_bytes(), name
    assert json.loads((parts / "fold_0" / "metrics.json").read_text())["calls"] == 2


def test_a_shard_set_without_tile_features_is_refused_naming_the_command(bag_shards, tmp_path):
    from hpc_pgo.data.shards import read_manifest, write_manifest
    from hpc_pgo.errors import PgoError
    from hpc_pgo.train.fold import FoldInputs

    inputs = FoldInputs.open(fold_config(bag_shards, *ARGS), 0)
    assert inputs.bags and inputs.image_size is None and inputs.max_tiles == 2
    assert inputs.model.image.fc[0].in_features == 256  # T2T-ViT-7's features
    copy = tmp_path / "copy"
    shutil.copytree(bag_shards, copy)
    manifest = read_manifest(copy)
    del manifest["tile_features"]
    write_manifest(copy, manifest)
    with pytest.raises(PgoError, match=r"no tile features recorded; run `pgo-shards embed-tiles"):
        FoldInputs.open(fold_config(copy, *ARGS), 0)
    cfg = fold_config(copy, "model=fusion_small")
    plain = FoldInputs.open(cfg, 0)  # the images still train end to end
    assert not plain.bags and plain.image_size == cfg.data.image_size


@pytest.mark.slow
def test_image_mean_fold_chooses_on_validation_patients_and_writes_no_attention(
    bag_shards, tmp_path
):
    from hpc_pgo.train.fold import train_fold

    args = (
        "model=image_mean", "train.epochs=2", "train.batch_size=4", "model.image.bag.hidden=8",
        "model.image.out=8", "train.val_fraction=0.2",
    )  # fmt: skip
    metrics = train_fold(fold_config(bag_shards, *args), 0, tmp_path / "run")
    fold = tmp_path / "run" / "fold_0"
    data = open_fold(bag_shards, 0)
    assert metrics["n_val_patients"] > 0 and metrics["chosen_epoch"] in (0, 1)
    assert metrics["n_test_units"] == metrics["n_test_patients"] == len(data.test)
    assert not (fold / "attention.csv").exists()
    predictions = read_predictions(fold / "predictions.csv")
    assert sorted(predictions["patient"]) == sorted(data.test)
    assert set(predictions["unit"]) == {"bag"} and "hazard_image" not in predictions
