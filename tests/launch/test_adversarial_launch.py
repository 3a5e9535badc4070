"""Adversarial cases of the launcher, kept so that their classes stay fixed (issue 10).

- concurrent use of one run_dir: a second launcher, a second submission while a fold of the
  first runs or is queued on Slurm, two fold tasks of different jobs (locks.FoldLock), a
  requeued task taking its own fold back, and no stale lock after a holder is killed;
- orphaned processes: a local launcher killed (SIGKILL, SIGTERM) while its fold is held at a
  known step takes every fold process with it, and the same command resumes the fold;
- bad scheduler requests: a partition that does not exist, GPUs on a CPU-only cluster: one
  `error:` line with sbatch's message, exit 2, the run_dir left exactly as it was;
- what a failed fold says: error.txt's first line is the cause, never a progress bar; never
  error.txt beside metrics.json;
- report on bad paths and its exit status (3 when a fold failed or is missing).

Real processes, the real submitit local executor and the real dev Slurm cluster; a job that is
killed or signalled is first held at a known step (hpc_pgo.hold), never raced.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpc_pgo import hold
from hpc_pgo.config import compose, config_digest, save_config
from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import LOCK
from hpc_pgo.launch.executors import exception_line, log_lines
from hpc_pgo.launch.locks import RunDirLock, fold_holder
from hpc_pgo.launch.rundir import prepare_run_dir
from hpc_pgo.launch.submission import submit, wait
from hpc_pgo.launch.task import children, start_ticks
from tests.launch.conftest import REPO_ROOT, _scancel, slurm_job_alive, tiny_args
from tests.launch.test_launch_units import write_fold
from tests.launch.test_submit_cli import load_main

SUBMIT = REPO_ROOT / "launch" / "submit.py"
REPORT = REPO_ROOT / "launch" / "report.py"
GUARD_S = 240  # the longest a test waits for a fold to reach its hold or to finish
GONE_S = 60  # the longest a test waits for killed processes to disappear


# --------------------------------------------------------------------------- helpers


def descendants(pid: int) -> dict[int, int]:
    """{pid: start ticks} of every process below `pid` (children, their children, ...)."""
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            start = start_ticks(child)
            if start is not None and child not in found:
                found[child] = start
                todo.append(child)
    return found


def wait_gone(processes: dict[int, int], timeout_s: float = GONE_S) -> None:
    """Wait until none of `processes` ({pid: start ticks}) runs (ended or a zombie); fail
    naming the survivors after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = {p: s for p, s in processes.items() if start_ticks(p) == s}
        if not alive:
            return
        if time.monotonic() > deadline:
            for pid in alive:  # leave nothing behind on the shared machine
                os.kill(pid, signal.SIGKILL)
            shown = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in alive}
            pytest.fail(f"still running {timeout_s:.0f} s after their launcher died: {shown}")
        time.sleep(0.1)


def launcher(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """launch/submit.py as a user starts it; output into files (a pipe would be inherited by
    any process the launcher leaves behind)."""
    return subprocess.Popen(
        [sys.executable, str(SUBMIT), *args],
        cwd=cwd,
        env=env,
        stdout=(cwd / "launcher.out").open("w"),
        stderr=(cwd / "launcher.err").open("w"),
    )


def hold_env(held: Path, step: int = 2) -> dict[str, str]:
    return {**os.environ, hold.ENV: hold.spec("fold", step, held)}


def tree(path: Path) -> dict[str, bytes | None]:
    """Every path under `path` -> its bytes (None for a directory): a run_dir's whole state."""
    return {
        str(p.relative_to(path)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(path.rglob("*"))
    }


# --------------------------------------------------------------------------- concurrent use


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hpc_pgo.launch.locks import FoldLock, RunDirLock
    kind, target, job, ready = sys.argv[1:5]
    if kind == "fold":
        lock = FoldLock.take(Path(target), job, "local")
    else:
        lock = RunDirLock.acquire(Path(target))
    Path(ready).write_text("held")
    while True:  # held until killed: the test kills it at a known point
        time.sleep(1)
    """
)
TAKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from hpc_pgo.launch.locks import FoldLock
    try:
        FoldLock.take(Path(sys.argv[1]), sys.argv[2], "local").release()
    except Exception as err:
        print(f"{type(err).__name__}: {err}")
        sys.exit(3)
    print("taken")
    """
)


def _holder(kind: str, target: Path, job: str, tmp_path: Path) -> subprocess.Popen:
    ready = tmp_path / f"ready-{kind}-{job}"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(target), job, str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists():  # the known point: the lock is held
        assert proc.poll() is None, f"the {kind} lock holder ended with {proc.returncode}"
        assert time.monotonic() < deadline, f"the {kind} lock holder never took its lock"
        time.sleep(0.05)
    return proc


def _take(out: Path, job: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TAKER, str(out), job], capture_output=True, text=True, timeout=60
    )


def test_a_fold_claimed_by_a_live_job_is_refused_to_another_job_and_retaken_by_its_own(
    tmp_path: Path,
):
    out = tmp_path / "run" / "fold_3"
    holder = _holder("fold", out, "101_3", tmp_path)
    try:
        record = fold_holder(out)
        assert record is not None and record["job"] == "101_3" and record["pid"] == holder.pid

        other = _take(out, "202_3")  # a task of another submission
        assert other.returncode == 3, other.stdout + other.stderr
        assert other.stdout.startswith(f"FoldBusy: {out} is running as job 101_3 (host ")
        assert f"pid {holder.pid}," in other.stdout and "this job (202_3) leaves it alone" in (
            other.stdout
        )
        same = _take(out, "101_3")  # the requeued task of the same job (array element)
        assert same.returncode == 0 and same.stdout.strip() == "taken", same.stdout + same.stderr
    finally:
        holder.kill()
        holder.wait()
    # a killed holder leaves no stale lock: the kernel released it with the process
    assert fold_holder(out) is None
    again = _take(out, "202_3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((out / LOCK).read_text())["job"] == "202_3"


def test_a_run_dir_held_by_a_launcher_is_refused_naming_it_and_free_once_it_is_killed(
    tmp_path: Path,
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _holder("run_dir", run_dir, "-", tmp_path)
    try:
        with pytest.raises(PgoError) as err:
            RunDirLock.acquire(run_dir)
        message = str(err.value)
        assert message.startswith(f"run_dir {run_dir} is in use by another launch/submit.py (")
        assert f"pid {holder.pid} on this host: {sys.executable} -c" in message
        assert message.endswith("valid: wait until it has finished, or another run_dir")
    finally:
        holder.kill()
        holder.wait()
    RunDirLock.acquire(run_dir).release()  # no stale lock
    assert sorted(p.name for p in run_dir.iterdir()) == []  # and no lock file


@pytest.mark.slow
def test_a_second_local_launcher_into_a_busy_run_dir_exits_2_and_changes_nothing(
    demo_shards: Path, tmp_path: Path
):
    run_dir, held = tmp_path / "run", tmp_path / "held"
    args = tiny_args(demo_shards, run_dir, "folds=0")
    first = launcher(args, tmp_path, hold_env(held))
    try:
        (marker,) = hold.wait_held(held, timeout_s=GUARD_S, running=lambda: first.poll() is None)
        before = {p.name for p in run_dir.iterdir()}, (run_dir / "config.yaml").read_bytes()
        submitit_before = sorted(p.name for p in (run_dir / "submitit").iterdir())

        second = subprocess.run(
            [sys.executable, str(SUBMIT), *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=GUARD_S,
        )  # fmt: skip

        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stdout == "" and len(second.stderr.splitlines()) == 1, second.stderr
        assert second.stderr.startswith(
            f"error: run_dir {run_dir} is in use by another launch/submit.py (pid {first.pid} "
            "on this host: "
        )
        after = {p.name for p in run_dir.iterdir()}, (run_dir / "config.yaml").read_bytes()
        assert after == before
        assert sorted(p.name for p in (run_dir / "submitit").iterdir()) == submitit_before
        # the fold trains in the first launcher's job alone
        assert fold_holder(run_dir / "fold_0")["pid"] == marker["pid"]
    finally:
        hold.release(held)
    assert first.wait(timeout=GUARD_S) == 0, (tmp_path / "launcher.err").read_text()[-2000:]
    assert (run_dir / "fold_0" / "metrics.json").is_file()
    assert not (run_dir / "fold_0" / "error.txt").exists()


@pytest.mark.slow
def test_a_submission_while_a_detached_local_fold_runs_is_refused_naming_its_job(
    demo_shards: Path, tmp_path: Path, monkeypatch
):
    run_dir, held = tmp_path / "run", tmp_path / "held"
    monkeypatch.setenv(hold.ENV, hold.spec("fold", 2, held))
    # wait=false: the launcher lets go of the run_dir; the running fold still holds its claim
    first = submit(tiny_args(demo_shards, run_dir, "folds=0", "wait=false"))
    job = first.array.jobs[0]
    try:
        (marker,) = hold.wait_held(held, timeout_s=GUARD_S, running=lambda: not job.done())
        monkeypatch.delenv(hold.ENV)
        with pytest.raises(PgoError) as err:
            submit(tiny_args(demo_shards, run_dir, "folds=0-1", "force=true"))
        message = str(err.value)
        assert message.startswith(
            f"run_dir {run_dir} is in use: fold_0 is running as job {job.job_id} (host "
        )
        assert f"pid {marker['pid']}, since " in message and "\n" not in message
        assert not (run_dir / "fold_1").exists()  # refused before anything was written
    finally:
        hold.release(held)
    assert wait(first, progress=False, poll_s=0.2, timeout_s=GUARD_S) == {"done": 1, "failed": 0}


@pytest.mark.slurm
@pytest.mark.slow
def test_a_second_slurm_submission_is_refused_while_the_fold_is_queued_then_running(
    slurm_cluster, demo_shards: Path, tmp_path: Path, job_env, monkeypatch
):
    run_dir, held = tmp_path / "run", tmp_path / "held"
    args = tiny_args(demo_shards, run_dir, "cluster=slurm_cpu", "folds=0")
    monkeypatch.setenv(hold.ENV, hold.spec("fold", 2, held))
    # queued and held by Slurm (sbatch --hold) until released: the launcher has long returned
    first = submit([*args, "cluster.sbatch={hold: true}"])
    (job_id,) = first.array.job_ids()
    jobs = [job_id.split("_")[0], first.array.report_job.job_id]
    try:
        with pytest.raises(PgoError) as queued:
            submit(args)
        assert str(queued.value).startswith(
            f"run_dir {run_dir} is in use: fold_0 is queued as Slurm job {job_id} (submitted "
        )
        subprocess.run(["scontrol", "release", jobs[0]], check=True, timeout=30)
        (marker,) = hold.wait_held(held, timeout_s=GUARD_S, running=slurm_job_alive(job_id))
        with pytest.raises(PgoError) as running:
            submit(args)
        assert str(running.value).startswith(
            f"run_dir {run_dir} is in use: fold_0 is running as job {job_id} (host "
        )
        assert f"pid {marker['pid']}," in str(running.value)

        # cancelled, the first job's error.txt says so first; its claim does not outlive it
        _scancel([jobs[0]])
        assert wait(first, progress=False, poll_s=0.5, timeout_s=GUARD_S)["failed"] == 1
        error = (run_dir / "fold_0" / "error.txt").read_text()
        assert error.startswith(f"job {job_id}: job cancelled (Slurm state CANCELLED")
        alive = slurm_job_alive(job_id)
        deadline = time.monotonic() + GUARD_S
        while alive():  # the known point: slurmctld no longer lists the job
            assert time.monotonic() < deadline, f"job {job_id} still listed by squeue"
            time.sleep(0.2)
        assert fold_holder(run_dir / "fold_0") is None
        monkeypatch.delenv(hold.ENV)
        again = submit(args)
        jobs += [again.array.job_ids()[0].split("_")[0], again.array.report_job.job_id]
        assert not (run_dir / "fold_0" / "error.txt").exists()  # the rerun starts clean
    finally:
        hold.release(held)
        _scancel(jobs)


# --------------------------------------------------------------------------- orphaned processes


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_local_launcher_takes_its_fold_processes_with_it_and_the_rerun_resumes(
    demo_shards: Path, tmp_path: Path, how: signal.Signals
):
    run_dir, held = tmp_path / "run", tmp_path / "held"
    args = tiny_args(demo_shards, run_dir, "folds=0")
    first = launcher(args, tmp_path, hold_env(held))
    try:
        (marker,) = hold.wait_held(held, timeout_s=GUARD_S, running=lambda: first.poll() is None)
        below = descendants(first.pid)  # the local controller and the fold's rank (and more)
        assert marker["pid"] in below and len(below) >= 2, below

        first.send_signal(how)
        code = first.wait(timeout=GONE_S)

        wait_gone(below)
    finally:
        hold.release(held)
    assert code == (-9 if how == signal.SIGKILL else 128 + 15)
    error = (run_dir / "fold_0" / "error.txt").read_text()
    if how == signal.SIGKILL:  # the rank's watchdog saw its launcher end
        assert error.startswith(f"stopped: its launcher (launch/submit.py, pid {first.pid}) ended")
    else:  # the launcher cancelled its fold before it exited
        assert error.startswith("job ") and ": cancelled (launch/submit.py got SIGTERM)" in error
        assert (tmp_path / "launcher.err").read_text().splitlines()[-1] == (
            "interrupted by SIGTERM: cancelled 1 running fold(s); the same command resumes them"
        )
    assert not (run_dir / "fold_0" / "metrics.json").exists()

    rerun = subprocess.run(
        [sys.executable, str(SUBMIT), *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=GUARD_S,
    )  # fmt: skip

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = json.loads((run_dir / "fold_0" / "metrics.json").read_text())
    assert metrics["calls"] == 2  # resumed from the checkpoint of step 2
    assert not (run_dir / "fold_0" / "error.txt").exists()  # never beside metrics.json


@pytest.mark.slow
def test_a_killed_rank_leaves_its_cause_as_error_txts_first_line_not_a_progress_bar(
    demo_shards: Path, tmp_path: Path, monkeypatch
):
    run_dir, held = tmp_path / "run", tmp_path / "held"
    monkeypatch.setenv(hold.ENV, hold.spec("fold", 2, held))
    sub = submit(tiny_args(demo_shards, run_dir, "folds=0"))
    job = sub.array.jobs[0]
    try:
        (marker,) = hold.wait_held(held, timeout_s=GUARD_S, running=lambda: not job.done())
        assert "%|" in (job.stderr() or "")  # the progress bar the old error.txt showed
        os.kill(marker["pid"], signal.SIGKILL)  # e.g. the kernel's OOM killer

        assert wait(sub, progress=False, poll_s=0.2, timeout_s=GUARD_S) == {"done": 0, "failed": 1}
    finally:
        hold.release(held)
    first, *rest = (run_dir / "fold_0" / "error.txt").read_text().splitlines()
    assert first == (
        f"job {job.job_id}: ended without a result and without an exception: its process was "
        "killed (e.g. kill -9, out of memory) or its controller ended"
    )
    assert not any("%|" in line for line in rest)


def test_error_lines_skip_progress_bars_and_take_the_last_exception():
    stderr = (
        "submitit INFO (2025-01-01 10:00:00,000) - Starting with JobEnvironment(...)\n"
        "fold 3:   0%|          | 0/14 [00:00<?, ?step/s]\r"
        "fold 3:  43%|####3     | 6/14 [00:02<00:03,  2.41step/s, epoch=0, loss=3.1]\n"
        "Traceback (most recent call last):\n"
        '  File "fold.py", line 1, in <module>\n'
        "KeyError: 'epoch'\n"
        "fold 3:  50%|#####     | 7/14 [00:03<00:03,  2.40step/s, epoch=0, loss=3.0]\n"
    )
    assert exception_line(stderr) == "KeyError: 'epoch'"
    assert not any("%|" in line for line in log_lines(stderr))
    assert exception_line("hpc_pgo.errors.PgoError: loss is NaN\n") == (
        "hpc_pgo.errors.PgoError: loss is NaN"
    )
    assert exception_line("fold 3:  43%|####3     | 6/14 [00:02<00:03]\n") is None


def test_a_rerun_never_leaves_error_txt_beside_metrics_json(tmp_path: Path):
    cfg = compose(["folds=0-1", f"run_dir={tmp_path}"])
    prepare_run_dir(cfg, tmp_path)
    # an orphaned fold finished after its launcher recorded it failed
    (tmp_path / "fold_0" / "metrics.json").write_text(
        json.dumps({"config_digest": config_digest(cfg)})
    )
    (tmp_path / "fold_0" / "error.txt").write_text("job 42: killed by signal 9 (SIGKILL)\n")

    assert prepare_run_dir(cfg, tmp_path) == [1]  # fold 0 is finished: skipped

    assert not (tmp_path / "fold_0" / "error.txt").exists()


@pytest.mark.slow
def test_a_garbled_metrics_json_is_not_a_finished_fold_and_the_rerun_replaces_it(
    demo_shards: Path, tmp_path: Path, caplog
):
    """Issue 21: a metrics.json that does not read (not JSON) counted as "done" at once: submit
    exited 0, its fold task ended with the launcher and the file stayed garbled. It is an
    unfinished fold: the same command trains it again (here from its last checkpoint) and the
    new metrics.json, written atomically, replaces it."""
    run_dir = tmp_path / "run"
    args = tiny_args(demo_shards, run_dir, "folds=0")
    first = submit(args)
    assert wait(first, progress=False, poll_s=0.2, timeout_s=GUARD_S) == {"done": 1, "failed": 0}
    metrics = run_dir / "fold_0" / "metrics.json"
    good = json.loads(metrics.read_text())
    metrics.write_text(metrics.read_text()[:20])  # cut short, e.g. a full disk

    with caplog.at_level("WARNING", logger="hpc_pgo.launch.rundir"):
        again = submit(args)
    assert [t.fold for t in again.array.tasks] == [0] and again.skipped == []
    assert f"{metrics} is not a readable metrics object: fold 0 runs again" in caplog.messages
    assert wait(again, progress=False, poll_s=0.2, timeout_s=GUARD_S) == {"done": 1, "failed": 0}
    rewritten = json.loads(metrics.read_text())
    assert rewritten["config_digest"] == good["config_digest"] == config_digest(again.runs[0][2])
    assert rewritten["cindex"] == good["cindex"]  # the same fold, resumed at its end
    assert not (run_dir / "fold_0" / "error.txt").exists()


@pytest.mark.parametrize("garbled", ['{"c_index": 0.7', "[0.7]", '"done"', "\xff\xfe"])
def test_a_garbled_metrics_json_is_neither_done_nor_skipped(tmp_path: Path, garbled: str):
    """The rule behind the case above, for every garbled shape: not JSON, JSON that is not an
    object, bytes that are not text. The launcher's state is not done; a submission runs the
    fold and removes the file first (so nothing reads it meanwhile)."""
    from hpc_pgo.launch.executors import DONE, fold_state
    from hpc_pgo.launch.task import FoldTask

    cfg = compose(["folds=0", f"run_dir={tmp_path}"])
    prepare_run_dir(cfg, tmp_path)
    metrics = tmp_path / "fold_0" / "metrics.json"
    metrics.write_bytes(garbled.encode("latin-1"))
    assert fold_state(FoldTask(tmp_path, 0), None) != DONE
    assert prepare_run_dir(cfg, tmp_path) == [0]
    assert not metrics.exists()


# --------------------------------------------------------------------------- bad scheduler requests


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("request_", "existing", "says"),
    [
        (["cluster.partition=nope"], False,
         "invalid partition specified: nope; Batch job submission failed: Invalid partition name "
         "specified"),
        (["cluster.gpus_per_node=1", "force=true"], True,
         "Invalid generic resource (gres) specification"),
    ],
    ids=["no-such-partition-new-run-dir", "gpus-on-cpu-cluster-existing-run-dir-forced"],
)  # fmt: skip
def test_an_sbatch_refusal_is_one_error_line_and_the_run_dir_stays_as_it_was(
    slurm_cluster, demo_shards: Path, tmp_path: Path, capsys, request_, existing, says
):
    run_dir = tmp_path / "runs" / "run"
    args = tiny_args(demo_shards, run_dir, "cluster=slurm_cpu", "folds=0-1", *request_)
    if existing:  # what an earlier submission left: its config, a failed fold, its logs
        save_config(compose(tiny_args(demo_shards, run_dir, "cluster=slurm_cpu")), run_dir)
        (run_dir / "fold_0" / "checkpoints").mkdir(parents=True)
        (run_dir / "fold_0" / "checkpoints" / "latest").write_text("step00000004")
        (run_dir / "fold_0" / "error.txt").write_text("job 7_0: job cancelled\n")
        (run_dir / "submitit" / "7_0").mkdir(parents=True)
    before = tree(tmp_path)

    assert load_main(SUBMIT)(args) == 2

    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith(
        f"error: cluster=slurm: sbatch refused the fold array of run_dir {run_dir}: {says}; "
        "nothing was submitted and the run_dir is as it was; valid: "
    )
    assert tree(tmp_path) == before  # nothing created, removed or changed
    if not existing:
        assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- unusable run dirs


@pytest.mark.parametrize("case", ["a-file", "under-a-file", "dev-null", "not-creatable"])
def test_a_run_dir_that_cannot_be_a_directory_is_one_error_line_exit_2(
    demo_shards: Path, tmp_path: Path, capsys, case: str
):
    """Issue 21: these ended in a traceback, exit 1. Now one line naming the run_dir, exit 2,
    and nothing is written anywhere (neither at the run_dir nor beside it)."""
    file = tmp_path / "taken"
    file.write_text("a file\n")
    run_dir, says = {
        "a-file": (file, f"run_dir {file} is a file, not a directory; valid: "),
        "under-a-file": (file / "runs" / "x",
                         f"run_dir {file / 'runs' / 'x'} is under {file}, which is a file, not a "
                         "directory; valid: "),
        "dev-null": (Path("/dev/null"),
                     "run_dir /dev/null is a character device, not a directory; valid: "),
        # /proc refuses new entries, even to root (for whom file modes are no obstacle)
        "not-creatable": (Path("/proc/pgo-no-such-entry/run"),
                          "run_dir /proc/pgo-no-such-entry/run cannot be created or written: "),
    }[case]  # fmt: skip
    before = tree(tmp_path)

    assert load_main(SUBMIT)(tiny_args(demo_shards, run_dir, "folds=0")) == 2

    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith(f"error: {says}"), captured.err
    assert "Traceback" not in captured.err
    assert tree(tmp_path) == before
    assert file.read_text() == "a file\n"


# --------------------------------------------------------------------------- folds the shards lack


@pytest.fixture(scope="module")
def one_death_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `pgo-shards build` of a 12-patient PORPOISE-layout table with ONE death, in 3
    k-fold splits: two of the three test splits hold no death."""
    from hpc_pgo.data.cli import main as pgo_shards
    from tests.data.conftest import porpoise_flags, porpoise_table, write_porpoise

    root = tmp_path_factory.mktemp("one-death")
    table = porpoise_table().assign(censorship=1)  # PORPOISE: censorship 1 = alive at last visit
    table.loc[table["case_id"] == table["case_id"].iloc[0], "censorship"] = 0
    flags = porpoise_flags(write_porpoise(root / "kirc.csv", table))
    out = root / "kfold3"
    assert pgo_shards(["build", *flags, "--splits", "kfold:3", "--out", str(out),
                       "--workers", "1"]) == 0  # fmt: skip
    return out


def _deaths_by_fold(shards: Path) -> list[int]:
    manifest = json.loads((shards / "manifest.json").read_text())
    return [sum(manifest["patients"][p]["event"] for p in fold["test"])
            for fold in manifest["splits"]["folds"]]  # fmt: skip


@pytest.mark.parametrize(
    ("folds", "says"),
    [
        ("folds=1-4", "folds=1-4: fold(s) 3-4 out of range for shard set {shards}, whose "
                      "manifest.json has 3 splits (data.n_splits=15 does not match it); valid: "
                      "folds within 0-2, with data.n_splits=3"),
        ("folds=0-2", "fold {dry}: the test split of shard set {shards} (4 patients) has no death "
                      "(event 1 in its manifest.json), so the fold's C-index is undefined; valid: "
                      "leave fold {dry} out of folds=, or rebuild the shard set with other "
                      "splits"),
    ],
    ids=["folds-beyond-the-manifests-splits", "a-test-split-without-a-death"],
)  # fmt: skip
def test_folds_the_shard_set_cannot_score_are_refused_before_anything_is_written(
    one_death_shards: Path, tmp_path: Path, capsys, folds: str, says: str
):
    """Issue 21: folds were checked against data.n_splits only (15 by default), and a test split
    without a death trained the fold to an undefined C-index. Both are refused up front: one
    line naming the fold(s) and the shard set, exit 2, no run_dir."""
    deaths = _deaths_by_fold(one_death_shards)
    assert sorted(deaths) == [0, 0, 1]  # what the fixture promises, read independently
    dry = deaths.index(0)
    run_dir = tmp_path / "runs" / "run"

    assert load_main(SUBMIT)(tiny_args(one_death_shards, run_dir, folds)) == 2

    captured = capsys.readouterr()
    assert captured.err == f"error: {says.format(shards=one_death_shards, dry=dry)}\n"
    assert captured.out == "" and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the report


def test_report_of_a_file_says_it_is_not_a_run_directory(tmp_path: Path, capsys):
    file = tmp_path / "summary.md"
    file.write_text("# not a run\n")

    assert load_main(REPORT)([str(file)]) == 2

    assert capsys.readouterr().err == (
        f"error: {file} is a file, not a run directory; valid: the directory launch/submit.py "
        "printed (holding config.yaml and fold_<k>/), not a file in it\n"
    )


def test_report_exits_3_when_a_fold_failed_or_is_missing_and_0_when_complete(
    tmp_path: Path, capsys
):
    main = load_main(REPORT)
    save_config(compose(["folds=0-2", f"run_dir={tmp_path}"]), tmp_path)
    write_fold(tmp_path, 0)
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / "error.txt").write_text("RuntimeError: boom\n")

    assert main([str(tmp_path)]) == 3
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "incomplete: fold_1: failed",
        "incomplete: fold_2: missing",
    ]
    assert captured.out == (tmp_path / "summary.md").read_text()  # the report is written anyway

    write_fold(tmp_path, 1)
    (tmp_path / "fold_1" / "error.txt").unlink()
    write_fold(tmp_path, 2)
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_submit_exits_3_when_a_fold_failed(demo_shards: Path, tmp_path: Path, job_env):
    env = {**os.environ, "PGO_TEST_FAIL_FOLD": "0"}
    args = tiny_args(demo_shards, tmp_path / "run", "folds=0",
                     "launch.fold_fn=tests.launch.folds.failing_fold")  # fmt: skip

    done = subprocess.run(
        [sys.executable, str(SUBMIT), *args], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=GUARD_S,
    )  # fmt: skip

    assert done.returncode == 3, done.stderr[-2000:]
    assert "fold 0 FAILED: RuntimeError: fold 0 made to fail by PGO_TEST_FAIL_FOLD" in done.stdout
