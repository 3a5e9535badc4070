"""Fold entries for the launch tests and the overhead benchmark (cfg.launch.fold_fn points here).

``failing_fold`` is the real hpc_pgo.train.fold.train_fold, except for the fold named by the
environment variable PGO_TEST_FAIL_FOLD, which raises before training (the jobs inherit the
submitter's environment). ``trivial_fold`` does no work at all: the unit the array-overhead
benchmark times.
"""

from __future__ import annotations

import os
from pathlib import Path


def failing_fold(cfg, fold: int, run_dir: Path) -> dict:
    """train_fold(cfg, fold, run_dir), or RuntimeError for fold $PGO_TEST_FAIL_FOLD."""
    from hpc_pgo.train.fold import train_fold

    if os.environ.get("PGO_TEST_FAIL_FOLD") == str(fold):
        raise RuntimeError(f"fold {fold} made to fail by PGO_TEST_FAIL_FOLD")
    return train_fold(cfg, fold, run_dir)


def trivial_fold(cfg, fold: int, run_dir: Path) -> dict:
    """No work: returns {"fold": fold}."""
    return {"fold": fold}
