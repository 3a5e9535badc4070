"""Shared fixtures of the fold-training tests: real demo shard sets built once per session with
`pgo-shards demo`, a composed config pointing at them, and a clean process environment."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest

import hpc_pgo  # noqa: F401  (before timm, see hpc_pgo/compat.py)
from hpc_pgo.config import compose
from hpc_pgo.data.cli import main as pgo_shards


def build_demo(out: Path, *flags: str) -> Path:
    """`pgo-shards demo --out OUT FLAGS` (real simulator, real shards); returns OUT."""
    assert pgo_shards(["demo", "--out", str(out), "--no-progress", "--workers", "1", *flags]) == 0
    return out


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory) -> Path:
    """60 patients x 2 ROIs of 32 px: 96 train units, 24 test units per fold."""
    out = tmp_path_factory.mktemp("shards") / "small"
    return build_demo(out, "--patients", "60", "--rois", "2", "--image-size", "32")


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """The demo cohort as `make demo` builds it (150 patients x 2 ROIs), at the preset's 64 px."""
    out = tmp_path_factory.mktemp("shards") / "demo"
    return build_demo(out, "--image-size", "64")


def fold_config(shards: Path, *args: str):
    """A composed config on `shards`: no DataLoader workers (tests share 2 cores), one thread."""
    return compose([f"data.shards={shards}", "train.num_workers=0", *args])


@pytest.fixture(autouse=True)
def clean_environment():
    """train_fold exports the rendezvous variables of its 1-rank group; undo that after a test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def checkpointed(cfg, out: Path, fold: int):
    """(FoldInputs of `fold` whose model holds the weights of out/checkpoints/latest, in eval
    mode; the fold's test loader with the standardizer the fold saved)."""
    import torch

    from hpc_pgo.data.loader import make_loader
    from hpc_pgo.data.standardizer import Standardizer
    from hpc_pgo.train.fold import FoldInputs

    inputs = FoldInputs.open(cfg, fold)
    tag = (out / "checkpoints" / "latest").read_text().strip()
    state = torch.load(
        out / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=False
    )["module"]
    inputs.model.load_state_dict(state)
    inputs.model.eval()
    loader = make_loader(
        inputs.data.shard_dir, fold, "test", batch_size=64, groups=inputs.groups,
        image_size=inputs.image_size, standardizer=Standardizer.load(out / "standardizer.json"),
        shuffle_buffer=1, holdout=inputs.data.val,
    )  # fmt: skip
    return inputs, loader


def _rank(rank: int, world: int, port: int, cfg_yaml: str, run_dir: str, errors: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )  # fmt: skip
    try:
        from omegaconf import OmegaConf

        from hpc_pgo.train.fold import train_fold

        train_fold(OmegaConf.create(cfg_yaml), 0, Path(run_dir))
    except BaseException:
        Path(errors, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise


def train_fold_on_two_ranks(cfg, run_dir: Path, errors: Path) -> None:
    """Fold 0 of `cfg` trained by 2 spawned processes (a real gloo group of 2 ranks); a rank's
    traceback is written to errors/rank<r>.txt."""
    import torch.multiprocessing as mp
    from omegaconf import OmegaConf

    from hpc_pgo.engine.distributed import find_free_port

    mp.start_processes(
        _rank,
        args=(2, find_free_port(), OmegaConf.to_yaml(cfg), str(run_dir), str(errors)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
