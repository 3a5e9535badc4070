"""`python -m hpc_pgo.train CONFIG --fold K` in a fresh process: trains, resumes, refuses bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_pgo.config import save_config
from tests.train.conftest import fold_config

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "hpc_pgo.train", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_trains_a_saved_config_and_resumes_it(small_shards, tmp_path):
    cfg = fold_config(small_shards, "model=genomic", "train.epochs=2", "train.batch_size=16")
    cfg.train.stop_after_steps = 5
    saved = save_config(cfg, tmp_path)
    first = run_cli(str(saved), "--fold", "2")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1]) == {
        "status": "stopped", "fold": 2, "step": 5, "epoch": 0,
    }  # fmt: skip
    cfg.train.stop_after_steps = None
    save_config(cfg, tmp_path)
    second = run_cli(str(tmp_path), "--fold", "2")
    assert second.returncode == 0, second.stderr
    metrics = json.loads(second.stdout.strip().splitlines()[-1])
    assert metrics["status"] == "complete" and metrics["calls"] == 2 and metrics["steps"] == 12
    assert (tmp_path / "fold_2" / "predictions.csv").is_file()


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_cli_bad_fold_is_one_error_line_and_exit_2(small_shards, tmp_path):
    saved = save_config(fold_config(small_shards, "model=genomic"), tmp_path)
    result = run_cli(str(saved), "--fold", "99")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("error: fold 99 is out of range")
        and "valid folds are 0..14" in lines[-1]
    )
    assert "Traceback" not in result.stderr
