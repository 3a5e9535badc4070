"""The fold as a checkpointable submitit task: set up the ranks, call the fold entry, requeue.

As dinov2's Trainer: ``FoldTask.__call__`` exports the rendezvous variables once
(hpc_pgo.launch.env), loads the run's saved config and calls the ordinary fold entry
``cfg.launch.fold_fn(cfg, fold, run_dir)`` (default ``hpc_pgo.train.fold.train_fold``), which
knows nothing of Slurm. ``checkpoint()`` returns a DelayedSubmission of a fresh FoldTask: on
timeout (USR2, ``signal_delay_s`` before the limit) or preemption, submitit requeues only this
array element, and the fold entry resumes from its last checkpoint in run_dir/fold_<k>/checkpoints.

A fold that fails leaves run_dir/fold_<k>/error.txt (the exception's one-line summary, then the
traceback); the fold entry may write it itself, otherwise the task does. The task then re-raises,
so that the scheduler records the failure; the other folds of the array go on. A fold that
finishes removes an error.txt left by an earlier try: never error.txt beside metrics.json.

Every rank claims its fold for the whole call (``hpc_pgo.launch.locks.FoldLock``): a task of
another submission finds the fold claimed and ends with FoldBusy, touching nothing.

On the local executor the ranks end with their launcher: ``FoldTask.launcher`` names the
waiting launch/submit.py process (pid and start time), and a watchdog thread in every rank
waits for that process to end (a pidfd, or /proc polling); then rank 0 writes error.txt and the
rank kills its own children and itself (SIGKILL: a rank stuck in a collective or a futex wait
cannot ignore it). Each local rank also asks the kernel for SIGKILL when its parent, submitit's
local controller, dies (prctl PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import submitit

from hpc_pgo.atomic import write_text
from hpc_pgo.config import load_config
from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import ERROR, fold_dir, has_metrics
from hpc_pgo.launch.env import export_rendezvous
from hpc_pgo.launch.locks import FoldBusy, FoldLock
from hpc_pgo.launch.plan import plan_array

log = logging.getLogger(__name__)


def resolve_fold_fn(dotted: str) -> Callable:
    """The function named by a dotted path 'package.module.function' (cfg.launch.fold_fn)."""
    module_name, _, attr = str(dotted).rpartition(".")
    if not module_name:
        raise PgoError(
            f"launch.fold_fn={dotted!r} is not a dotted path; valid: package.module.function, "
            "e.g. hpc_pgo.train.fold.train_fold"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise PgoError(
            f"launch.fold_fn={dotted!r}: module {module_name!r} cannot be imported ({err}); valid: "
            "an importable module, e.g. hpc_pgo.train.fold.train_fold"
        ) from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PgoError(f"launch.fold_fn={dotted!r}: {module_name} has no function {attr!r}")
    return fn


def error_summary(err: BaseException) -> str:
    """'<Type>: <first line of the message>', the line the report shows for a failed fold."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else '(no message)'}"


def start_ticks(pid: int) -> int | None:
    """A process's start time (clock ticks after boot, /proc/<pid>/stat field 22); None if gone.

    With the pid it names one process for good: a pid reused later has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    if fields[0] == "Z":  # a zombie has ended; only its exit status is left
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessId:
    """One process for good: pid and start time (a reused pid is another process)."""

    pid: int
    start: int

    @classmethod
    def current(cls) -> ProcessId:
        return cls(os.getpid(), start_ticks(os.getpid()) or 0)

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start

    def wait_gone(self, poll_s: float = 1.0) -> None:
        """Block until the process has ended (a pidfd where the kernel has them, else polling)."""
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll /proc
            while self.alive():
                time.sleep(poll_s)
            return
        try:
            if self.alive():  # the pidfd is this process, not a later one with the same pid
                select.select([fd], [], [])  # readable once the process has ended
        finally:
            os.close(fd)


def children(pid: int) -> list[int]:
    """The pids of a process's children (Linux /proc; [] elsewhere or when it has ended)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def kill_children_and_exit() -> None:
    """SIGKILL this process's children (DataLoader workers, ...), then this process."""
    me = os.getpid()
    for child in children(me):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    os.kill(me, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent ends (Linux); if the parent has
    already ended, end now."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # not Linux: the launcher watchdog still applies
        return
    if os.getppid() != parent:
        kill_children_and_exit()


def watch_launcher(launcher: ProcessId, on_gone: Callable[[], None]) -> threading.Thread:
    """A daemon thread that calls on_gone() once the launcher process has ended."""

    def run() -> None:
        launcher.wait_gone()
        on_gone()

    thread = threading.Thread(target=run, name="pgo-launcher-watchdog", daemon=True)
    thread.start()
    return thread


class _LauncherWatch:
    """One launcher watchdog per process, whatever the number of folds it trains in turn
    (FoldChain): it acts for the fold running when the launcher ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._current: tuple[FoldTask, Path, int] | None = None

    def follow(self, task: FoldTask, out: Path, rank: int) -> None:
        with self._lock:
            self._current = (task, out, rank)
            if self._thread is None:
                self._thread = watch_launcher(task.launcher, self._gone)

    def _gone(self) -> None:
        with self._lock:
            current = self._current
        if current is not None:
            task, out, rank = current
            task._launcher_gone(out, rank)


_LAUNCHER_WATCH = _LauncherWatch()


class StopOnWarning:
    """While the fold (or MLP-A pretraining, launch/pretrain.py) runs, submitit's warning signal
    (USR2: time limit near, or preemption) asks the entry function to checkpoint and return,
    through its module's ``request_stop()``.

    submitit installs its handler (checkpoint() + requeue + exit) before calling the task;
    run as it is, it would end the process mid-step and lose the work since the last periodic
    checkpoint. Here the handler only sets a flag and calls request_stop(); when the fold entry
    has returned {"status": "stopped"} (after its checkpoint), ``requeue()`` hands the signal to
    submitit's handler. A fold entry without request_stop keeps submitit's behaviour.
    """

    def __init__(self, fold_fn: Callable) -> None:
        module = importlib.import_module(fold_fn.__module__)
        self._request_stop = getattr(module, "request_stop", None)
        self._signal = submitit.JobEnvironment._usr_sig()
        self._previous = None
        self.received: int | None = None

    def __enter__(self) -> StopOnWarning:
        if callable(self._request_stop):
            self._previous = signal.signal(self._signal, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        log.warning("signal %d: the fold checkpoints after its current step, then requeues", signum)
        self.received = signum
        self._request_stop()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(self._signal, self._previous)

    def requeue(self) -> None:
        """Call submitit's handler of the warning signal (it requeues this task and exits)."""
        if callable(self._previous):
            self._previous(self.received or self._signal, None)


class FoldTask:
    """One fold of a run, as a picklable, checkpointable submitit callable.

    run_dir: the (sub-)run directory holding config.yaml; the fold writes run_dir/fold_<fold>/.
    launcher: on the local executor with wait=true, the launch/submit.py process the ranks end
    with (module text); None: the ranks run on their own (Slurm, or local with wait=false).
    Only paths, the fold number and the launcher are pickled: the config is read from disk in
    the job, so a requeued task sees exactly what was submitted.
    """

    launcher: ProcessId | None = None  # (also for a task pickled before the attribute existed)

    def __init__(
        self, run_dir: str | os.PathLike, fold: int, launcher: ProcessId | None = None
    ) -> None:
        self.run_dir = str(run_dir)
        self.fold = int(fold)
        self.launcher = launcher

    def __repr__(self) -> str:
        return f"FoldTask(run_dir={self.run_dir!r}, fold={self.fold})"

    def __call__(self) -> dict:
        """Run the fold on this rank; returns the fold entry's result (metrics)."""
        run_dir = Path(self.run_dir)
        out = fold_dir(run_dir, self.fold)
        job = submitit.JobEnvironment()
        local = job.name() == "local"
        if local:
            die_with_parent()
        cfg = load_config(run_dir)
        (plan,) = [p for p in plan_array(cfg) if p.fold == self.fold] or [None]
        threads = plan.threads if plan is not None else 1
        here = export_rendezvous(threads)
        log.info(
            "fold %d: rank %d of %d on %s:%d, %d threads",
            self.fold, here.rank, here.world_size, here.master_addr, here.master_port, threads,
        )  # fmt: skip
        if self.launcher is not None and local:
            _LAUNCHER_WATCH.follow(self, out, here.rank)
        # every rank claims the fold: a task of another submission touches nothing
        with FoldLock.take(out, str(job.job_id), job.name()):
            try:
                fold_fn = resolve_fold_fn(cfg.launch.fold_fn)
                with StopOnWarning(fold_fn) as warning:
                    result = fold_fn(cfg, self.fold, run_dir)
                if isinstance(result, dict) and result.get("status") == "stopped":
                    # stopped by the signal, or by its own budget (train.stop_after_minutes):
                    # submitit's handler calls checkpoint(), requeues this array element and exits
                    warning.requeue()
                if here.rank == 0 and has_metrics(out):
                    (out / ERROR).unlink(missing_ok=True)  # an earlier try's
                return result
            except BaseException as err:
                # SystemExit/KeyboardInterrupt come from submitit's requeue and scancel: not
                # failures
                if isinstance(err, Exception) and here.rank == 0:
                    self._record_error(run_dir, err)
                raise

    def _launcher_gone(self, out: Path, rank: int) -> None:
        """The watchdog's action: error.txt (rank 0, unless the fold finished), then SIGKILL."""
        pid = self.launcher.pid if self.launcher is not None else "?"
        log.error("fold %d: its launcher (pid %s) ended; this rank stops now", self.fold, pid)
        if rank == 0 and not has_metrics(out) and not (out / ERROR).exists():
            write_text(
                out / ERROR,
                f"stopped: its launcher (launch/submit.py, pid {pid}) ended, and the local folds "
                "end with it; the same command again resumes from the last checkpoint\n",
            )
        kill_children_and_exit()

    def _record_error(self, run_dir: Path, err: Exception) -> None:
        """run_dir/fold_<k>/error.txt, unless the fold entry wrote its own (it knows more), or the
        fold belongs to another job (FoldBusy: its files are not ours to write)."""
        if isinstance(err, FoldBusy):
            return
        path = fold_dir(run_dir, self.fold) / ERROR
        if path.exists():
            return
        write_text(path, error_summary(err) + "\n\n" + traceback.format_exc())

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout or preemption: requeue a fresh copy of this fold.

        The fold's state lives in its checkpoints on disk, not in this object, so a fresh task
        resumes where the last checkpoint left off.
        """
        log.warning("fold %d: requeued; it resumes from its last checkpoint", self.fold)
        return submitit.helpers.DelayedSubmission(FoldTask(self.run_dir, self.fold, self.launcher))


class FoldChain:
    """Several fold tasks run one after another in ONE process: cluster.folds_per_process on the
    local executor, where each process otherwise pays its start-up (importing torch, DeepSpeed,
    lifelines: seconds) for a fold that may train for seconds.

    Each fold is exactly its FoldTask: its own claim, config, seed, error.txt and metrics; the
    process group of a multi-rank fold stays up from one fold to the next (hpc_pgo.train.fold),
    and every rank runs the same folds in the same order. A fold that fails (error.txt) does not
    stop the others; the chain then ends with one PgoError naming the failed folds, so that the
    scheduler records a failure. On the warning signal the running fold checkpoints and
    ``checkpoint()`` requeues the folds without metrics.json, in order.
    """

    def __init__(self, tasks: list[FoldTask]) -> None:
        if not tasks:
            raise ValueError("FoldChain needs at least one fold task")
        self.tasks = list(tasks)

    def __repr__(self) -> str:
        return f"FoldChain({', '.join(f'fold {t.fold} of {t.run_dir}' for t in self.tasks)})"

    def __call__(self) -> list[dict]:
        results, failed = [], []
        for task in self.tasks:
            try:
                results.append(task())
            except Exception as err:  # recorded in the fold's error.txt; the next fold goes on
                log.error("fold %d of %s failed: %s", task.fold, task.run_dir, error_summary(err))
                failed.append(f"{task.run_dir}/fold_{task.fold}: {error_summary(err)}")
        if failed:
            raise PgoError(
                f"{len(failed)} of the {len(self.tasks)} folds of this process failed: "
                + "; ".join(failed)
            )
        return results

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Requeue the folds of the chain that have no metrics.json yet (each resumes from its
        own last checkpoint)."""
        left = [
            FoldTask(t.run_dir, t.fold, t.launcher)
            for t in self.tasks
            if not has_metrics(fold_dir(Path(t.run_dir), t.fold))
        ]
        log.warning("requeued: folds %s resume from their last checkpoints", [t.fold for t in left])
        return submitit.helpers.DelayedSubmission(FoldChain(left or self.tasks[-1:]))
