"""launch/submit.py and launch/report.py as a user runs them, on the local executor (e), and
their refusals of bad input: one `error:` line, exit status 2, nothing written.

Real submitit LocalExecutor processes and real training (the tiny config of conftest.tiny_args).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hpc_pgo import hold
from hpc_pgo.config import compose, load_config, save_config
from hpc_pgo.launch.report import report
from hpc_pgo.launch.submission import submit, wait
from tests.launch.conftest import REPO_ROOT, tiny_args
from tests.scripts import load_script

SUBMIT = REPO_ROOT / "launch" / "submit.py"
REPORT = REPO_ROOT / "launch" / "report.py"


def load_main(path: Path):
    """main() of an entry script, imported in-process (no torch import per call)."""
    return load_script(path).main


@pytest.mark.slow
def test_e_local_executor_runs_the_folds_waits_and_prints_the_report(
    demo_shards: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        str(SUBMIT),
        *tiny_args(demo_shards, run_dir, "folds=0-2", "cluster.parallel=2"),
    ]

    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"run directory: {run_dir}"
    assert (
        lines[1].startswith("submitted 3 fold task(s); job ids: ")
        and "(+1 start as slots free)" in lines[1]
    )
    assert "| fold | C-index | patients | events |" in done.stdout
    assert "folds: 100%" in done.stderr  # the progress bar
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_folds"] == 3 and summary["failed_folds"] == {}
    for k in range(3):
        metrics = json.loads((run_dir / f"fold_{k}" / "metrics.json").read_text())
        assert summary["c_index"]["per_fold"][str(k)] == pytest.approx(metrics["cindex"])
        assert (
            f"| {k} | {metrics['cindex']:.4f} | {metrics['n_test_patients']} | {metrics['n_test_events']} |"
            in done.stdout
        )
    assert sorted(
        p.name for p in (run_dir / "submitit").iterdir() if p.name[0].isdigit()
    )  # logs per job

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped (finished with the same config): fold_0, fold_1, fold_2" in again.stdout
    assert "nothing to run" in again.stdout

    rewritten = subprocess.run(
        [sys.executable, str(REPORT), str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert rewritten.returncode == 0 and rewritten.stdout == (run_dir / "summary.md").read_text()


@pytest.mark.slow
def test_local_fold_signalled_mid_training_resumes_from_its_checkpoint(
    demo_shards: Path, tmp_path: Path, monkeypatch
):
    held = tmp_path / "held"
    # the fold holds after step 4 (a checkpoint step: every 2) until signalled (hpc_pgo.hold)
    monkeypatch.setenv(hold.ENV, hold.spec("fold", 4, held))
    sub = submit(tiny_args(demo_shards, tmp_path / "run", "folds=4"))
    out, job = sub.run_dir / "fold_4", sub.array.jobs[0]
    try:
        (marker,) = hold.wait_held(held, timeout_s=180, running=lambda: not job.done())
        # USR2 to the fold's rank processes: what submitit's local controller sends them
        # signal_delay_s before its time limit (LocalJob._interrupt would signal the controller)
        controller = job.job_id
        ranks = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
        assert ranks == [str(marker["pid"])]
        os.kill(marker["pid"], signal.SIGUSR2)

        assert wait(sub, progress=False, poll_s=0.2, timeout_s=180) == {"done": 1, "failed": 0}
    finally:
        hold.release(held)  # a failed test leaves no fold waiting for its hold's timeout

    # the signal reached the fold while it was held after step 4: it stopped there
    assert json.loads(hold.released_marker(held).read_text())["by"] == "stop"
    assert "fold 4: requeued; it resumes from its last checkpoint" in (job.stderr() or "")
    first_call, second_call = _tensorboard_steps(out)[:2]
    assert (first_call, second_call) == (list(range(1, 5)), list(range(5, 15)))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calls"] == 2
    steps = pd.read_csv(out / "modulation.csv")["step"].tolist()
    assert steps == list(range(1, 15))  # resumed after step 4: each of the 14 steps once


def _tensorboard_steps(fold_out: Path) -> list[list[int]]:
    """The train/loss steps of each TensorBoard event file of a fold (one file per call of the
    fold), the files in the order they were started."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = [
        list(EventFileLoader(str(f)).Load())
        for f in (fold_out / "tensorboard").glob("events.out.tfevents.*")
    ]
    return [
        [e.step for e in events if any(v.tag == "train/loss" for v in e.summary.value)]
        for events in sorted(files, key=lambda events: events[0].wall_time)
    ]


def test_bad_input_is_one_error_line_and_nothing_written(
    demo_shards: Path, tmp_path: Path, capsys, monkeypatch
):
    main = load_main(SUBMIT)
    run_dir = tmp_path / "run"
    base = tiny_args(demo_shards, run_dir)

    def refused(*extra: str) -> str:
        assert main([*base, *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
        assert not run_dir.exists() or sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
        return captured.err.strip()

    assert (
        refused("folds=0-20")
        == "error: folds=0-20: folds 15-20 out of range for 15 splits (valid 0-14)"
    )
    assert refused("folds=1-a").startswith("error: folds=1-a: '1-a' is not a fold or a range a-b")
    missing = tmp_path / "nowhere"
    assert refused(f"data.shards={missing}") == (
        f"error: data=demo: shard set {missing} has no manifest.json (data.shards); build it with: "
        f"pgo-shards demo --out {missing}"
    )
    assert refused("launch.fold_fn=hpc_pgo.train.nofold.train_fold").startswith(
        "error: launch.fold_fn='hpc_pgo.train.nofold.train_fold': module 'hpc_pgo.train.nofold' cannot be imported"
    )
    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(tmp_path))  # no sbatch, no sinfo
        message = refused("cluster=slurm_cpu")
    assert message.startswith(
        "error: cluster=slurm: no Slurm here (sbatch/sinfo not found on PATH)"
    )
    assert "cluster=local" in message
    # a run directory that holds another config
    save_config(compose(base), run_dir)
    message = refused("train.lr=0.001", "model.genomic.snn.dropout=0.25")
    assert message.startswith(f"error: run_dir {run_dir} holds another config (")
    assert "model.genomic.snn.dropout: 0.0 -> 0.25; train.lr: 0.002 -> 0.001" in message
    assert message.endswith("or force=true to override")


def test_report_cli_refuses_a_directory_without_a_run(tmp_path: Path, capsys):
    main = load_main(REPORT)
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: run directory {tmp_path / 'nope'} does not exist"
    )


@pytest.mark.slow
def test_sweep_runs_every_configuration_as_one_submission_and_reports_side_by_side(
    demo_shards: Path, tmp_path: Path
):
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "configs", configs)
    (configs / "sweep" / "tiny.yaml").write_text(
        "title: tiny sweep\n"
        "columns: [lr]\n"
        "reference: slow\n"
        "runs:\n"
        "  - {name: slow, labels: {lr: 0.002}, overrides: [train.lr=0.002]}\n"
        "  - {name: fast, labels: {lr: 0.01}, overrides: [train.lr=0.01]}\n"
        "  - {name: cox, overrides: [launch.fold_fn=hpc_pgo.train.coxph.coxph_fold,"
        " 'coxph.groups=[cnv,mut]', coxph.pcs=8]}\n"
    )
    run_dir = tmp_path / "run"
    args = tiny_args(demo_shards, run_dir, "sweep=tiny", "folds=2", "train.epochs=1")

    sub = submit(args, config_dir=configs)
    assert len(sub.array.tasks) == 3  # 3 configurations x 1 fold, one submission
    assert wait(sub, progress=False, poll_s=0.2, timeout_s=240) == {"done": 3, "failed": 0}
    text = report(run_dir)

    # the CoxPH reference ran as its own array element on the same fold's patients
    cox = pd.read_csv(run_dir / "cox" / "fold_2" / "predictions.csv")
    slow = pd.read_csv(run_dir / "slow" / "fold_2" / "predictions.csv")
    assert sorted(cox["patient"]) == sorted(slow["patient"].unique())
    result = json.loads((run_dir / "sweep_summary.json").read_text())
    cox_c = json.loads((run_dir / "cox" / "fold_2" / "metrics.json").read_text())["cindex"]
    slow_c = json.loads((run_dir / "slow" / "fold_2" / "metrics.json").read_text())["cindex"]
    assert result["paired"]["cox"]["mean"] == pytest.approx(cox_c - slow_c)
    assert result["paired"]["cox"]["n"] == 1 and "slow" not in result["paired"]

    lrs = {name: load_config(run_dir / name).train.lr for name in ("slow", "fast")}
    assert lrs == {"slow": 0.002, "fast": 0.01}
    rows = [
        line.split("|")
        for line in text.splitlines()
        if line.startswith("| slow") or line.startswith("| fast")
    ]
    assert [r[1].strip() for r in rows] == ["slow", "fast"] and [r[2].strip() for r in rows] == [
        "0.002",
        "0.01",
    ]
    for name, row in zip(("slow", "fast"), rows, strict=True):
        metrics = json.loads((run_dir / name / "fold_2" / "metrics.json").read_text())
        assert row[3].strip().startswith(f"{metrics['cindex']:.3f} ± n/a")
