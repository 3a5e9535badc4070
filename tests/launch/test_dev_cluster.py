"""The dev Slurm cluster (slurm/dev-cluster.sh) runs what the project submits to it.

Real Slurm, real submitit, no mocks: a 15-task job array (the 15 folds) and a job on
two nodes (multi-node training), the plain sbatch examples, and the script's own
status / idempotent start / argument checks.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import submitit

if TYPE_CHECKING:
    from tests.launch.conftest import SlurmCluster

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_CLUSTER = REPO_ROOT / "slurm" / "dev-cluster.sh"

N_FOLDS = 15
# Seconds a test waits for its jobs before it cancels them and fails; the jobs' own
# wall-time limit (timeout_min in slurm_executor, --time in the examples) backs it up.
JOB_GUARD_S = 120


def task_facts(fold: int) -> dict[str, object]:
    """Runs IN the job: what Slurm tells one array task about itself."""
    env = submitit.JobEnvironment()
    return {
        "fold": fold,
        "array_task_id": env.array_task_id,  # a string, "0".."14"
        "job_id": env.job_id,  # "<array job id>_<task id>"
        "node": os.environ["SLURMD_NODENAME"],  # both nodes share one hostname
    }


def rank_facts() -> dict[str, object]:
    """Runs IN the job, once per task: the task's place in a multi-node job."""
    env = submitit.JobEnvironment()
    return {
        "global_rank": env.global_rank,
        "local_rank": env.local_rank,
        "num_tasks": env.num_tasks,
        "num_nodes": env.num_nodes,
        "node": os.environ["SLURMD_NODENAME"],
    }


def _final_states(job_id: str, n_tasks: int, timeout_s: float = 30) -> list[str]:
    """`["1_0|COMPLETED", ...]`: how each task of `job_id` ended, as sacct records it.

    A task whose result file is written may still be running, and slurmdbd records
    tasks a moment after slurmctld: poll until sacct lists `n_tasks` tasks, none of them
    pending, running or completing (or `timeout_s` passed).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        rows = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        unfinished = [r for r in rows if r.split("|")[1] in {"PENDING", "RUNNING", "COMPLETING"}]
        if len(rows) == n_tasks and not unfinished or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


@pytest.mark.slurm
@pytest.mark.slow
def test_array_of_15_folds_returns_one_result_per_task(
    slurm_cluster: SlurmCluster, slurm_executor: submitit.AutoExecutor, results_within
) -> None:
    slurm_executor.update_parameters(name="pgo-test-array", slurm_array_parallelism=2)
    jobs = slurm_executor.map_array(task_facts, range(N_FOLDS))
    assert len(jobs) == N_FOLDS

    results = [only for (only,) in results_within(jobs, JOB_GUARD_S)]

    assert len(results) == N_FOLDS
    # map_array sends input k to array task k: the fold index IS the array index
    assert [int(r["array_task_id"]) for r in results] == list(range(N_FOLDS))
    assert [r["fold"] for r in results] == list(range(N_FOLDS))
    assert len({r["job_id"] for r in results}) == N_FOLDS
    assert len({str(r["job_id"]).split("_")[0] for r in results}) == 1  # one array job
    # two tasks run at once and a node has one CPU, so the array spreads over two nodes
    nodes = {r["node"] for r in results}
    assert len(nodes) >= 2 and nodes <= set(slurm_cluster.nodes), nodes
    # and no task was killed after its result was written (e.g. by an early USR2)
    states = _final_states(str(results[0]["job_id"]).split("_")[0], N_FOLDS)
    assert len(states) == N_FOLDS and all(s.endswith("|COMPLETED") for s in states), states


@pytest.mark.slurm
def test_two_node_job_sees_ranks_0_and_1_on_two_nodes(
    slurm_cluster: SlurmCluster, slurm_executor: submitit.AutoExecutor, results_within
) -> None:
    slurm_executor.update_parameters(name="pgo-test-2nodes", nodes=2, tasks_per_node=1)
    job = slurm_executor.submit(rank_facts)

    (results,) = results_within([job], JOB_GUARD_S)

    assert len(results) == 2
    assert sorted(r["global_rank"] for r in results) == [0, 1]
    assert all(r["local_rank"] == 0 for r in results)
    assert all(r["num_tasks"] == 2 and r["num_nodes"] == 2 for r in results)
    nodes = [r["node"] for r in results]
    assert len(set(nodes)) == 2
    assert set(nodes) <= set(slurm_cluster.nodes)
    assert _final_states(job.job_id, 1) == [f"{job.job_id}|COMPLETED"]


def _sbatch_wait(script: Path, out_dir: Path, extra: list[str], n_tasks: int) -> None:
    """Submit a plain sbatch example and check that all `n_tasks` of it COMPLETED.

    Polls squeue every 0.2 s (`sbatch --wait` polls every few seconds); after
    JOB_GUARD_S the job is cancelled and the test fails with the job's output.
    """
    cmd = ["sbatch", "--parsable", *extra, str(script)]
    submitted = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=30)
    assert submitted.returncode == 0, f"{' '.join(cmd)}: {submitted.stderr}"
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + JOB_GUARD_S
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            logs = {p.name: p.read_text()[-500:] for p in sorted(out_dir.glob("*.out"))}
            pytest.fail(f"{script.name}: job {job_id} not done after {JOB_GUARD_S} s: {logs}")
        time.sleep(0.2)
    # squeue forgets a job once it ended; sacct tells how each task ended
    states = _final_states(job_id, n_tasks)
    logs = {p.name: p.read_text()[-500:] for p in sorted(out_dir.glob("*.out"))}
    assert len(states) == n_tasks and all(s.endswith("|COMPLETED") for s in states), (states, logs)


@pytest.mark.slurm
def test_plain_sbatch_fold_array_example_runs_its_folds(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    script = REPO_ROOT / "slurm" / "examples" / "fold-array.sbatch"
    # the first and the last fold only: the whole 15-task array is the submitit test's job
    _sbatch_wait(
        script,
        tmp_path,
        [
            "--array=0,14",
            f"--partition={slurm_cluster.partition}",
            f"--output={tmp_path}/%A_%a.out",
        ],
        n_tasks=2,
    )

    texts = [p.read_text() for p in tmp_path.glob("*.out")]
    folds = sorted(int(m) for text in texts for m in re.findall(r"^fold=(\d+) ", text, re.M))
    assert folds == [0, N_FOLDS - 1]
    assert all(re.search(r"^fold \d+ done$", text, re.M) for text in texts)


@pytest.mark.slurm
def test_plain_sbatch_two_node_example_runs_one_rank_per_node(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    script = REPO_ROOT / "slurm" / "examples" / "two-node.sbatch"
    _sbatch_wait(
        script,
        tmp_path,
        [f"--partition={slurm_cluster.partition}", f"--output={tmp_path}/%j.out"],
        n_tasks=1,
    )

    (out,) = tmp_path.glob("*.out")
    ranks = dict(re.findall(r"^rank=(\d+) world=2 local_rank=0 node=(\S+) ", out.read_text(), re.M))
    assert sorted(ranks) == ["0", "1"]
    assert len(set(ranks.values())) == 2


def _dev_cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEV_CLUSTER), *args], capture_output=True, text=True, timeout=300
    )


def _daemon_pids(status_stdout: str) -> dict[str, str]:
    """{"munged": "123", "slurmd:node1": "456", ...} from `dev-cluster.sh status`."""
    return dict(re.findall(r"^(\S+)\s+pid (\d+)\s+running$", status_stdout, re.M))


@pytest.mark.slurm
def test_status_lists_every_daemon_running(slurm_cluster: SlurmCluster) -> None:
    status = _dev_cluster("status")

    assert status.returncode == 0, status.stdout + status.stderr
    pids = _daemon_pids(status.stdout)
    expected = {"munged", "mariadbd", "slurmdbd", "slurmctld"}
    expected |= {f"slurmd:{node}" for node in slurm_cluster.nodes}
    assert set(pids) == expected
    for node in slurm_cluster.nodes:
        assert re.search(
            rf"^{node} {slurm_cluster.partition}\*? (idle|mix|alloc) ", status.stdout, re.M
        )


@pytest.mark.slurm
def test_start_on_a_running_cluster_changes_nothing(slurm_cluster: SlurmCluster) -> None:
    before = _daemon_pids(_dev_cluster("status").stdout)

    start = _dev_cluster("start", "--nodes", str(len(slurm_cluster.nodes)))

    assert start.returncode == 0, start.stdout + start.stderr
    # nothing (re)started, no config file rewritten
    assert not re.search(r"starting|stopping|wrote|installing", start.stdout), start.stdout
    assert _daemon_pids(_dev_cluster("status").stdout) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no command given"),
        (["launch"], "unknown command 'launch'"),
        (["start", "--nodes", "0"], "--nodes '0' is not a whole number from 1 to 16"),
        (["start", "--nodes", "two"], "--nodes 'two' is not a whole number"),
        (["start", "--timeout", "-5"], "--timeout '-5' is not a positive number"),
        (["start", "--gpus", "1"], "unknown option '--gpus'"),
        (["stop", "--force"], "unknown option '--force' (valid: --wipe)"),
        (["status", "--verbose"], "status takes no options"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(args: list[str], message: str) -> None:
    # argument checks come before anything is installed, started or stopped
    done = _dev_cluster(*args)

    assert done.returncode == 2
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: ") and message in first, done.stderr


def test_help_lists_the_commands() -> None:
    done = _dev_cluster("--help")

    assert done.returncode == 0
    for word in ("start [--nodes N]", "stop [--wipe]", "status", "debug", "pgodev"):
        assert word in done.stdout
