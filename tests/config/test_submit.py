"""launch/submit.py as a user runs it: a real subprocess, its exit status, stdout and stderr.

Each run imports torch through hpc_pgo (a few seconds), hence the slow mark on all but --help.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.config.conftest import REPO

SUBMIT = REPO / "launch" / "submit.py"


def run_submit(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    """python launch/submit.py ARGS in `cwd`, output captured as text."""
    return subprocess.run(
        [sys.executable, str(SUBMIT), *args], cwd=cwd, capture_output=True, text=True, timeout=180
    )


def test_help_describes_syntax_and_examples():
    result = run_submit("--help")
    assert result.returncode == 0, result.stderr
    for text in (
        "--dry-run",
        "group=choice",
        "folds=0-14",
        "0,3,7",
        "configs/README.md",
        "examples:",
    ):
        assert text in result.stdout


@pytest.mark.slow
def test_dry_run_prints_config_and_one_line_per_fold(tmp_path):
    result = run_submit("--dry-run", "folds=0-2", "cluster=slurm", "cluster.time=90", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)  # the plan lines are YAML comments
    assert printed["folds"] == [0, 1, 2]
    assert printed["cluster"]["kind"] == "slurm" and printed["cluster"]["time"] == 90
    assert printed["run_dir"].startswith(str(tmp_path.resolve() / "runs" / "demo-fusion"))
    plan = [line[2:] for line in result.stdout.splitlines() if line.startswith("# ")]
    assert plan[0].startswith("planned array: 3 fold(s) [0-2] on cluster=slurm")
    rows = [line.split() for line in plan[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert all(r[1] == "slurm" and r[7] == "90min" for r in rows)
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.slow
@pytest.mark.parametrize(
    "token,expected",
    [
        (
            "train.lrr=0.001",
            "unknown config key 'train.lrr' in 'train.lrr=0.001'; did you mean 'train.lr'?",
        ),
        (
            "data=nope",
            "unknown choice 'nope' for group 'data' (in 'data=nope'); valid: demo, "
            "survset_dlbcl, tcga_gbmlgg_pathomic, tcga_gbmlgg_porpoise, tcga_kirc, tcga_kirc_pathomic",
        ),
        ("folds=3-1", "folds=3-1: range 3-1 is descending; use e.g. folds=1-3"),
        ("folds=0-20", "folds=0-20: folds 15-20 out of range for 15 splits (valid 0-14)"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(token, expected):
    result = run_submit("--dry-run", token)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {expected}"]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "token",
    ["train.lr=.nan", "train.lr=.inf", "balance.alpha=-.inf", "train.weight_decay=.NaN",
     "train.stop_after_minutes=.inf", "coxph.penalizer=.nan"],
)  # fmt: skip
def test_a_non_finite_number_in_any_float_key_is_refused_naming_it(token):
    """Issue 21: .nan and .inf are floats, so they passed the type check of every float key and
    every bound (nan compares false); a fold then trained to NaN."""
    from hpc_pgo.config import compose
    from hpc_pgo.errors import PgoError

    key = token.split("=")[0]
    with pytest.raises(PgoError) as caught:
        compose([token])
    message = str(caught.value)
    assert message.startswith(f"{key}=") and message.endswith("valid: a finite number")
    assert "\n" not in message


@pytest.mark.slow
def test_a_non_finite_learning_rate_exits_2_and_writes_nothing(tmp_path):
    result = run_submit("train.lr=.nan", "folds=0", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["error: train.lr=nan is not valid; valid: a finite number"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
