"""data.tile_features: a bag encoder's folds are tied to the feature set they trained on.

Real parts: a demo shard set, `pgo-shards embed-tiles` with resnet10t weights of one seed, a
model=image_abmil run on the local executor, then the features recomputed with the weights of
another seed and the same run resubmitted (refused naming the key; retrained with force=true),
and a fold whose config names the old feature set (refused in FoldInputs.open).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpc_pgo.config import compose, config_digest, load_config
from hpc_pgo.data.cli import main as pgo_shards
from hpc_pgo.errors import PgoError
from hpc_pgo.launch.submission import fill_tile_features
from tests.launch.conftest import REPO_ROOT
from tests.scripts import load_script
from tests.train.conftest import build_demo

SUBMIT = REPO_ROOT / "launch" / "submit.py"
ARCH = "resnet10t"
# config_digest(compose(["model=image"])) before data.tile_features existed (commit 7095cf6):
# a model that reads no bags keeps the key null, and its digest
DIGEST_IMAGE_BEFORE = "9b609c06dc176cba59e4232a4c7b0b01ff953eaa4de45fef7ecfba50a9fa9187"
TINY = (
    "model=image_abmil", "train.epochs=1", "train.batch_size=4", "train.num_workers=0",
    "model.image.bag.hidden=8", "model.image.bag.attention=4", "model.image.out=8",
    "cluster.parallel=1",
)  # fmt: skip


def _embed(shards: Path, weights: Path) -> str:
    """`pgo-shards embed-tiles` with `weights`; the manifest's feature-set digest after it."""
    args = ["embed-tiles", str(shards), "--arch", ARCH, "--weights", str(weights), "--no-progress"]
    assert pgo_shards(args) == 0
    return json.loads((shards / "manifest.json").read_text())["tile_features"]["digest"]


def _weights(root: Path, seed: int) -> Path:
    import timm

    torch.manual_seed(seed)
    path = root / f"{ARCH}-{seed}.pth"
    torch.save(timm.create_model(ARCH, num_classes=0).state_dict(), path)
    return path


def _fold_with_a_death(shards: Path) -> int:
    manifest = json.loads((shards / "manifest.json").read_text())
    patients = manifest["patients"]
    return next(
        k
        for k, split in enumerate(manifest["splits"]["folds"])
        if any(int(patients[p].get("event", 0)) == 1 for p in split["test"])
    )


def _submit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SUBMIT), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_a_config_without_bags_keeps_the_key_null_and_its_digest():
    cfg = compose(["model=image"])
    assert cfg.data.tile_features is None
    assert config_digest(cfg) == DIGEST_IMAGE_BEFORE
    fill_tile_features(cfg)  # no bag encoder: nothing read, null stays null
    assert cfg.data.tile_features is None and config_digest(cfg) == DIGEST_IMAGE_BEFORE


@pytest.mark.slow
def test_recomputed_features_refuse_the_resubmission_and_the_stale_fold(
    tmp_path: Path, capsys, job_env
):
    shards = build_demo(
        tmp_path / "demo", "--patients", "40", "--rois", "2", "--image-size", "32"
    )  # fmt: skip
    first = _embed(shards, _weights(tmp_path, 1))
    fold = _fold_with_a_death(shards)
    run_dir = tmp_path / "run"
    args = (f"data.shards={shards}", f"run_dir={run_dir}", f"folds={fold}", *TINY)

    done = _submit(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_config(run_dir).data.tile_features == first
    metrics = json.loads((run_dir / f"fold_{fold}" / "metrics.json").read_text())
    assert metrics["config_digest"] == config_digest(load_config(run_dir))

    second = _embed(shards, _weights(tmp_path, 2))
    assert second != first
    assert load_script(SUBMIT).main(list(args)) == 2
    err = capsys.readouterr().err
    assert f"run_dir {run_dir} holds another config" in err, err
    assert f"data.tile_features: {first} -> {second}" in err and "force=true" in err, err

    # a fold whose config was submitted for the old features (a queued or requeued job)
    from hpc_pgo.train.fold import FoldInputs

    stale = compose([f"data.shards={shards}", *TINY, f"data.tile_features={first}"])
    with pytest.raises(PgoError) as caught:
        FoldInputs.open(stale, fold)
    message = str(caught.value)
    assert f"shard set {shards}" in message and "data.tile_features" in message
    assert first[:12] in message and second[:12] in message and "force=true" in message
    # null (a fold run directly, never submitted): the current features are accepted
    assert FoldInputs.open(compose([f"data.shards={shards}", *TINY]), fold).bags

    forced = _submit(*args, "force=true", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "skipped" not in forced.stdout
    assert load_config(run_dir).data.tile_features == second
    retrained = json.loads((run_dir / f"fold_{fold}" / "metrics.json").read_text())
    assert retrained["config_digest"] == config_digest(load_config(run_dir))
    assert retrained["config_digest"] != metrics["config_digest"]
