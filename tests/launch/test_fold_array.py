"""The fold array on the real dev Slurm cluster, with real training (no mocks).

(a) the 15 folds of a tiny config on the demo cohort as ONE array; the report job (afterany)
    writes summary.json with 15 folds;
(b) a fold sent submitit's warning signal while held after step 4 (hpc_pgo.hold) stops there with
    a checkpoint, requeues itself and resumes; its predictions equal those of the uninterrupted
    run of (a);
(c) one fold made to fail is reported with its error while the other finishes;
(d) one fold on 2 nodes x 1 task trains as 2 DeepSpeed ranks and equals the 1-rank fold to 1e-5.
The local executor path (e) is in test_submit_cli.py.
(f) a fold whose job submitit takes for ended mid-requeue counts as running while squeue lists it.

The tiny config (conftest.tiny_args): genomic-only, 2 epochs of 7 steps, checkpoint every 2 steps.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import submitit

from hpc_pgo import hold
from hpc_pgo.launch.executors import FAILED, RUNNING, Array, slurm_alive
from hpc_pgo.launch.submission import Submission, submit, wait
from hpc_pgo.launch.task import FoldTask
from tests.launch.conftest import (
    _results_within,
    _scancel,
    release_when_requeued,
    slurm_job_alive,
    tiny_args,
    wait_until_requeued,
)
from tests.launch.test_dev_cluster import _final_states

if TYPE_CHECKING:
    from tests.launch.conftest import SlurmCluster

N_FOLDS = 15
ARRAY_GUARD_S = 600  # 15 folds two at a time on the 2 one-CPU nodes take ~3 min
FOLD_GUARD_S = 240


def wait_or_cancel(sub: Submission, timeout_s: float) -> dict[str, int]:
    """wait() with a guard: after timeout_s the jobs are cancelled and the test fails."""
    try:
        return wait(sub, progress=False, poll_s=0.5, timeout_s=timeout_s)
    except TimeoutError as err:
        _scancel(sorted({job_id.split("_")[0] for job_id in sub.array.job_ids()}))
        logs = [job.stderr() or "" for job in sub.array.jobs.values()]
        pytest.fail(f"{err}\nlast stderr: {logs[-1][-2000:]}", pytrace=False)


def predictions(run_dir: Path, fold: int) -> pd.DataFrame:
    df = pd.read_csv(
        run_dir / f"fold_{fold}" / "predictions.csv", dtype={"patient": str, "unit": str}
    )
    return df.sort_values(["patient", "unit"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(slurm_cluster: SlurmCluster, demo_shards: Path, tmp_path_factory) -> Submission:
    """(a)'s run: the 15 folds as one array, then the report job; done when the report job is."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    sub = submit(tiny_args(demo_shards, run_dir, "cluster=slurm_cpu", "folds=0-14"))
    assert sub.array.report_job is not None
    try:
        _results_within([sub.array.report_job], ARRAY_GUARD_S)
    finally:
        _scancel(
            sorted({job_id.split("_")[0] for job_id in sub.array.job_ids()})
        )  # no-op when done
    return sub


@pytest.mark.slurm
@pytest.mark.slow
def test_a_fifteen_folds_as_one_array_and_the_report_job_writes_the_summary(reference) -> None:
    jobs = reference.array.job_ids()
    assert len(jobs) == N_FOLDS and len({j.split("_")[0] for j in jobs}) == 1  # ONE array
    assert sorted(int(j.split("_")[1]) for j in jobs) == list(range(N_FOLDS))
    states = _final_states(jobs[0].split("_")[0], N_FOLDS)
    assert all(s.endswith("|COMPLETED") for s in states), states

    # written by the aggregation job (afterany on the array), before anyone else reported
    summary = json.loads((reference.run_dir / "summary.json").read_text())
    assert summary["n_folds"] == N_FOLDS
    assert sorted(map(int, summary["c_index"]["per_fold"])) == list(range(N_FOLDS))
    assert summary["failed_folds"] == {} and summary["missing_folds"] == []
    for k in range(N_FOLDS):
        metrics = json.loads((reference.run_dir / f"fold_{k}" / "metrics.json").read_text())
        assert summary["c_index"]["per_fold"][str(k)] == pytest.approx(metrics["cindex"])
        assert metrics["world_size"] == 1 and metrics["calls"] == 1
    assert 0.0 < summary["c_index"]["ci95"] < 0.5
    for name in ("summary.md", "km.png", "modulation.png"):
        assert (reference.run_dir / name).stat().st_size > 0
    # the same run submitted again: every fold finished with the same config, nothing to run
    again = submit(reference_args(reference))
    assert again.array.tasks == [] and len(again.skipped) == N_FOLDS


def reference_args(reference: Submission) -> list[str]:
    """The reference run's own command line, rebuilt from its saved config."""
    cfg = reference.runs[0][2]
    return tiny_args(Path(cfg.data.shards), reference.run_dir, "cluster=slurm_cpu", "folds=0-14")


def _modulation_rows(fold_out: Path) -> int:
    path = fold_out / "modulation.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


@pytest.mark.slurm
@pytest.mark.slow
def test_b_fold_signalled_mid_training_requeues_and_resumes_to_the_same_predictions(
    reference, demo_shards: Path, tmp_path: Path, monkeypatch
) -> None:
    fold, held = 3, tmp_path / "held"
    # the fold holds after step 4 of 14 (a checkpoint step) until signalled (hpc_pgo.hold);
    # sbatch passes the variable to the job, and the requeued job keeps it
    monkeypatch.setenv(hold.ENV, hold.spec("fold", 4, held))
    sub = submit(tiny_args(demo_shards, tmp_path / "run", "cluster=slurm_cpu", f"folds={fold}"))
    (job_id,) = sub.array.job_ids()
    out = sub.run_dir / f"fold_{fold}"
    deadline = time.monotonic() + FOLD_GUARD_S
    try:
        hold.wait_held(held, timeout_s=FOLD_GUARD_S, running=slurm_job_alive(job_id))
        # submitit's warning signal, as Slurm sends it signal_delay_s before the time limit
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        wait_until_requeued(job_id, deadline)
        # the first run has ended and the second waits: it stopped at the held step exactly
        assert json.loads(hold.released_marker(held).read_text())["by"] == "stop"
        assert (out / "checkpoints" / "latest").read_text() == "step00000004"
        assert _modulation_rows(out) == 4 and not (out / "metrics.json").exists()
        # Slurm holds a requeued job for ~2 min (Reason=BeginTime); release it at once
        release_when_requeued(job_id, deadline)

        counts = wait_or_cancel(sub, FOLD_GUARD_S)
    except BaseException:
        _scancel([job_id])  # nothing left held on the shared cluster
        raise

    error = out / "error.txt"
    assert counts == {"done": 1, "failed": 0}, error.read_text() if error.exists() else counts
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calls"] == 2  # stopped once, resumed once
    log = sub.array.jobs[0].stderr() or ""
    assert f"fold {fold}: requeued; it resumes from its last checkpoint" in log
    # resumed after step 4: modulation.csv has each of the 14 steps once
    assert pd.read_csv(out / "modulation.csv")["step"].tolist() == list(range(1, 15))
    got, want = predictions(sub.run_dir, fold), predictions(reference.run_dir, fold)
    assert got[["patient", "unit"]].equals(want[["patient", "unit"]])
    np.testing.assert_allclose(got["hazard"], want["hazard"], rtol=0, atol=1e-6)


@pytest.mark.slurm
@pytest.mark.slow
def test_c_a_failing_fold_is_reported_while_the_other_finishes(
    slurm_cluster: SlurmCluster, demo_shards: Path, tmp_path: Path, job_env, monkeypatch
) -> None:
    monkeypatch.setenv("PGO_TEST_FAIL_FOLD", "1")
    sub = submit(
        tiny_args(demo_shards, tmp_path / "run", "cluster=slurm_cpu", "folds=0-1",
                  "launch.fold_fn=tests.launch.folds.failing_fold")
    )  # fmt: skip

    counts = wait_or_cancel(sub, FOLD_GUARD_S)

    assert counts == {"done": 1, "failed": 1}
    error = (sub.run_dir / "fold_1" / "error.txt").read_text()
    assert error.startswith("RuntimeError: fold 1 made to fail by PGO_TEST_FAIL_FOLD")
    (report_job,) = [sub.array.report_job]
    _results_within([report_job], 60)
    summary = json.loads((sub.run_dir / "summary.json").read_text())
    assert list(summary["c_index"]["per_fold"]) == ["0"]
    assert summary["failed_folds"] == {
        "1": "RuntimeError: fold 1 made to fail by PGO_TEST_FAIL_FOLD"
    }
    states = dict(s.split("|") for s in _final_states(sub.array.job_ids()[0].split("_")[0], 2))
    assert sorted(states.values()) == ["COMPLETED", "FAILED"]


@pytest.mark.slurm
@pytest.mark.slow
def test_d_one_fold_on_two_nodes_trains_as_two_ranks_and_equals_one_rank(
    reference, slurm_cluster: SlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    fold = 0
    sub = submit(
        tiny_args(demo_shards, tmp_path / "run", "cluster=slurm_cpu", f"folds={fold}",
                  "cluster.nodes=2", "cluster.tasks_per_node=1")
    )  # fmt: skip

    assert wait_or_cancel(sub, FOLD_GUARD_S) == {"done": 1, "failed": 0}

    metrics = json.loads((sub.run_dir / f"fold_{fold}" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    nodes = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", sub.array.job_ids()[0], "-o", "NNodes,NodeList"],
        capture_output=True, text=True, timeout=30,
    ).stdout.split()  # fmt: skip
    assert nodes and nodes[0].startswith("2|"), nodes
    got, want = predictions(sub.run_dir, fold), predictions(reference.run_dir, fold)
    assert got[["patient", "unit"]].equals(want[["patient", "unit"]])
    np.testing.assert_allclose(got["hazard"], want["hazard"], rtol=0, atol=1e-5)


@pytest.mark.slurm
def test_f_a_fold_whose_job_submitit_took_for_ended_is_running_while_squeue_lists_it(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """Between a requeued job's first run and its next one, sacct can report the first run's end
    (CANCELLED DUE TO JOB REQUEUE) and submitit then caches the job as finished for good. The
    fold is running while squeue lists the job, and failed once squeue no longer does.

    The job is real and queued (held an hour by --begin); the watcher's cache is set to what it
    holds after it read that one sacct answer."""
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(
        timeout_min=1, slurm_partition=slurm_cluster.partition,
        slurm_additional_parameters={"begin": "now+3600"},
    )  # fmt: skip
    job = executor.submit(print, "never runs")
    array = Array(tasks=[FoldTask(tmp_path / "run", 0)], jobs={0: job})
    try:
        assert array.poll() == [RUNNING]  # pending on its begin time
        job.watcher._info_dict[job.job_id] = {"State": "CANCELLED"}
        job.watcher._finished.add(job.job_id)
        assert job.done()  # as submitit sees it now
        assert array.poll() == [RUNNING]
    finally:
        _scancel([job.job_id])
    deadline = time.monotonic() + 60
    while slurm_alive([job.job_id]):
        assert time.monotonic() < deadline, f"job {job.job_id} still listed after scancel"
        time.sleep(0.2)
    assert array.poll() == [FAILED]
