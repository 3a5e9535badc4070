"""Fixtures for tests that run jobs on the dev Slurm cluster (slurm/dev-cluster.sh).

The cluster is started outside pytest (`make test` runs `make cluster` first) and is
reused across runs. When it does not answer, the cluster tests FAIL with the command
that starts it: a missing cluster is a broken test set-up, never a reason to skip.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import submitit

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_CLUSTER = REPO_ROOT / "slurm" / "dev-cluster.sh"
NOT_RUNNING = (
    "dev Slurm cluster not running: run `make cluster` (bash slurm/dev-cluster.sh start --nodes 2)"
)
# Node states in which slurmctld will place a job (sinfo -h -o %t, short forms).
USABLE_STATES = frozenset({"idle", "mix", "alloc"})


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the running dev cluster.

    partition: the default partition (sinfo marks it with '*'); `debug` on the dev cluster.
    nodes: the usable node names in that partition, sorted (node1, node2, ...).
    """

    partition: str
    nodes: tuple[str, ...]


def _run(args: Sequence[str], timeout_s: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command; a missing binary or a hang reads as a failed command."""
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout_s)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(args), 127, "", str(exc))


def _fail(why: str) -> None:
    pytest.fail(f"{NOT_RUNNING}\n({why})", pytrace=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running dev cluster: slurmctld answers, >= 2 usable nodes, sacct works."""
    ping = _run(["scontrol", "ping"])
    if ping.returncode != 0 or "UP" not in ping.stdout:
        _fail(f"scontrol ping: {(ping.stdout + ping.stderr).strip()}")
    # one line per node and partition: "node1 debug* idle"
    sinfo = _run(["sinfo", "-h", "-N", "-o", "%N %P %t"])
    if sinfo.returncode != 0:
        _fail(f"sinfo: {sinfo.stderr.strip()}")
    rows = [line.split() for line in sinfo.stdout.splitlines() if line.strip()]
    default = sorted({part.rstrip("*") for _, part, _ in rows if part.endswith("*")})
    if len(default) != 1:
        _fail(f"no single default partition in sinfo output: {sinfo.stdout.strip()!r}")
    partition = default[0]
    nodes = tuple(
        sorted(
            node
            for node, part, state in rows
            # a suffix ("idle*": not responding, "idle~": powered off) makes a node unusable
            if part.rstrip("*") == partition and state in USABLE_STATES
        )
    )
    if len(nodes) < 2:
        _fail(f"fewer than 2 usable nodes in partition {partition}: {sinfo.stdout.strip()!r}")
    sacct = _run(["sacct", "-n", "-X", "-S", "now"])
    if sacct.returncode != 0:
        _fail(f"sacct (accounting, which submitit needs): {sacct.stderr.strip()}")
    return SlurmCluster(partition=partition, nodes=nodes)


def _scancel(job_ids: Sequence[str]) -> None:
    _run(["scancel", *job_ids])


def _results_within(jobs: Sequence[submitit.Job], timeout_s: float) -> list[list[object]]:
    """`job.results()` of every job, or a test failure after `timeout_s` seconds.

    A job that is not done by then is cancelled, and the failure message carries its
    Slurm state and the end of its stderr, so a hung job never hangs the test run.
    """
    deadline = time.monotonic() + timeout_s
    while not all(job.done() for job in jobs):
        if time.monotonic() > deadline:
            stuck = [job for job in jobs if not job.done()]
            _scancel(sorted({job.job_id.split("_")[0] for job in stuck}))
            job = stuck[0]
            state = job.get_info(mode="force").get("State", "unknown")
            stderr = (job.stderr() or "<no stderr yet>")[-2000:]
            pytest.fail(
                f"{len(stuck)} of {len(jobs)} jobs not done after {timeout_s:.0f} s, "
                f"cancelled; job {job.job_id} is {state}, its stderr:\n{stderr}",
                pytrace=False,
            )
        time.sleep(0.5)
    return [job.results() for job in jobs]


@pytest.fixture
def results_within() -> Callable[[Sequence[submitit.Job], float], list[list[object]]]:
    """`results_within(jobs, timeout_s)`: the jobs' results, or fail (and scancel) in time."""
    return _results_within


@pytest.fixture
def slurm_executor(
    slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> submitit.AutoExecutor:
    """A submitit executor on the dev cluster's default partition, 5 min wall time.

    A fresh folder per test: job ids restart at 1 after `dev-cluster.sh stop --wipe`, and
    a reused folder would hand back an old result under a reused id.
    """
    # Jobs unpickle functions of the test modules: make `tests.*` importable in them
    # whatever directory pytest was started from (sbatch passes the environment on).
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    )
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    # 5 min, not less: Slurm sends submitit's warning signal (USR2, 90 s before the
    # limit) once now + 90 s + 30 s (its check period) reaches the end time, so a 2-min
    # job is signalled at once and fails "timed-out and not checkpointable".
    executor.update_parameters(
        slurm_partition=slurm_cluster.partition, timeout_min=5, cpus_per_task=1
    )
    return executor


# --- fold arrays (test_fold_array.py) ------------------------------------------------------


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo cohort (150 patients x 2 ROIs, 15 splits) built by the real `pgo-shards demo`."""
    from hpc_pgo.data.cli import main as pgo_shards

    out = tmp_path_factory.mktemp("shards") / "demo"
    assert pgo_shards(["demo", "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    return out


def tiny_args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny real training config on `shards`: genomic-only, 2 epochs of 7 steps, a checkpoint
    every 2 steps; no shuffle buffer and no dropout, so that 1 and 2 ranks see the same global
    batches and compute the same model (train.shuffle_buffer=1, model.genomic.snn.dropout=0)."""
    return [
        f"data.shards={shards}", f"run_dir={run_dir}", "model=genomic", "train.epochs=2",
        "train.num_workers=0", "train.shuffle_buffer=1", "model.genomic.snn.dropout=0.0",
        "train.steps_per_checkpoint=2", *extra,
    ]  # fmt: skip


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs unpickle fold entries of the test modules: make `tests.*` importable in them, and
    leave no rendezvous variable of an earlier in-process fold in the jobs' environment."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    )
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "LOCAL_WORLD_SIZE",
    ):
        monkeypatch.delenv(key, raising=False)


def wait_until_requeued(job_id: str, deadline: float) -> None:
    """Wait until the job is requeued (pending on its BeginTime, one restart): its first run
    has ended and nothing of it runs until it is released (release_when_requeued)."""
    while True:
        shown = subprocess.run(
            ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30
        ).stdout
        if "Restarts=1" in shown and "JobState=PENDING" in shown:
            return
        assert time.monotonic() < deadline, f"job {job_id} was not requeued: {shown}"
        time.sleep(0.2)


def release_when_requeued(job_id: str, deadline: float) -> None:
    """Wait until the job is requeued, then make it eligible (Slurm holds a requeued job for
    ~2 min otherwise), but not within the second of the requeue. Seen on the dev cluster: a
    restart released in the same second as the requeue was refused at once (slurmctld "Killing
    non-startable batch JobId=...: Job credential revoked", slurmd "Job ... already killed, do
    not launch batch job"); the requeue revokes the first run's credential, and Slurm keeps
    those times in whole seconds. The revocation came before the requeue was seen, so a release
    in the next second comes after it."""
    wait_until_requeued(job_id, deadline)
    seen = time.time()
    time.sleep(max(0.0, math.floor(seen) + 1.1 - time.time()))
    subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30
    )


def slurm_job_alive(job_id: str) -> Callable[[], bool]:
    """A check for hpc_pgo.hold.wait_held: True while squeue lists the job (pending, running
    or completing), so that waiting for a hold fails as soon as the job has ended instead."""

    def alive() -> bool:
        listed = _run(["squeue", "-h", "-j", job_id, "-o", "%i"])
        if listed.returncode != 0:  # a job slurmctld forgot, or squeue failed once: ask again
            return "Invalid job id" not in listed.stderr
        return bool(listed.stdout.strip())

    return alive
