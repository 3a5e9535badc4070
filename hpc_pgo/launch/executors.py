"""submitit executors for the fold array: the local machine or one Slurm job array.

One registry entry per cluster kind (cfg.cluster.kind) builds an ``Array`` from the fold tasks:

- ``local``: submitit's LocalExecutor. Each fold is one process group of tasks_per_node ranks;
  at most cluster.parallel of them run at once: the array hands out the next fold whenever one
  ends (``poll``), so it needs the submitting process to keep polling (wait=true). With
  cluster.folds_per_process = k > 1, a process trains up to k folds in turn (FoldChain), which
  pays the interpreter's start-up once for k short folds.
- ``slurm``: submitit's AutoExecutor; the folds go out as ONE job array (``executor.batch()``)
  with array_parallelism; then one aggregation job, dependent on the array (afterany), writes
  the report whatever the folds' outcome.

The sbatch options of a fold come from the cluster group (configs/cluster/slurm.yaml);
``slurm_parameters`` shows the mapping. An sbatch that refuses them (a partition or GPUs the
cluster does not have) is one PgoError line with sbatch's own message, and nothing stays
submitted (a report job refused after the array cancels the array).

``job_error`` says why a job ended without a result, cause first: the exception's line, "killed
by signal 9 (SIGKILL)", "job cancelled (CANCELLED by 0)", "time limit reached (TIMEOUT)", ...;
progress-bar lines of the job's stderr are never taken for a cause.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import ERROR, fold_dir, has_metrics
from hpc_pgo.launch.locks import fold_holder
from hpc_pgo.launch.task import FoldChain, FoldTask, children

log = logging.getLogger(__name__)

# Fold states, as the progress bar and the report name them.
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
REPORT_TIME_MIN = 30  # wall time of the aggregation job


def fold_state(task: FoldTask, job: submitit.Job | None, chained: bool = False) -> str:
    """A fold's state from its files first (they survive requeues), then from its job.

    done: a readable metrics.json (the fold entry writes it last; has_metrics); failed: error.txt exists, or the
    job ended without metrics.json; running: the job is queued or running; pending: not submitted.
    chained: the job trains several folds in turn (FoldChain); a fold of it is running once the
    job has claimed it (its lock record names the job), pending before.
    """
    out = fold_dir(task.run_dir, task.fold)
    if has_metrics(out):
        return DONE
    if (out / ERROR).is_file():
        return FAILED
    if job is None:
        return PENDING
    if not job.done():
        if chained:
            holder = fold_holder(out)
            return RUNNING if holder is not None and holder.get("job") == job.job_id else PENDING
        return RUNNING
    # the job ended: a fold entry that returned without metrics.json (e.g. killed) failed too
    return DONE if has_metrics(out) else FAILED


# a tqdm line of a job's stderr: "fold 0:  43%|####  | 6/14 [00:02<00:03, 2.4step/s]", or any
# line holding a carriage return (tqdm redraws one line with them)
_PROGRESS = re.compile(r"\r|\d+%\||\|\s*\d+/\d+\s*\[")
# the last line of a Python traceback: "RuntimeError: ...", "hpc_pgo.errors.PgoError: ..."
_EXCEPTION = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Busy)(?::|$)"
)
# Slurm end states that say the cause themselves
_SLURM_CAUSES = {
    "CANCELLED": "job cancelled",
    "TIMEOUT": "time limit reached (cluster.time)",
    "OUT_OF_MEMORY": "out of memory (cluster.mem_gb)",
    "NODE_FAIL": "its node failed",
    "PREEMPTED": "preempted",
    "BOOT_FAIL": "its node did not boot",
    "DEADLINE": "deadline reached",
}


def log_lines(text: str | None) -> list[str]:
    """The non-empty lines of a job log, progress-bar lines left out."""
    return [
        line.strip()
        for line in (text or "").splitlines()
        if line.strip() and not _PROGRESS.search(line)
    ]


def exception_line(text: str | None) -> str | None:
    """The last exception line ('Type: message') of a log or traceback, or None."""
    lines = [line for line in log_lines(text) if _EXCEPTION.match(line)]
    return lines[-1] if lines else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def job_cause(job: submitit.Job) -> str:
    """Why a finished job has no result, in one line (the cause first; see the module text)."""
    result = job.paths.result_pickle
    if result.exists():
        try:
            outcome, payload = submitit.core.utils.pickle_load(result)
        except Exception as err:  # a torn pickle: the job died while writing it
            return f"its result could not be read ({type(err).__name__})"
        if outcome == "error":
            return exception_line(str(payload)) or (log_lines(str(payload)) or ["failed"])[-1]
        return "finished"
    stderr = job.stderr()
    process = getattr(job, "_process", None)  # the local controller (submitit.LocalJob)
    if process is not None and process.poll() is not None and process.returncode < 0:
        n = -process.returncode
        return f"killed by signal {n} ({_signal_name(n)})"
    if isinstance(job, submitit.SlurmJob):
        state = str(job.get_info(mode="force").get("State") or "UNKNOWN")
        word = state.split()[0]
        if word in _SLURM_CAUSES:
            return f"{_SLURM_CAUSES[word]} (Slurm state {state})"
        line = exception_line(stderr)
        return line if line is not None else f"ended without a result (Slurm state {state})"
    line = exception_line(stderr)
    if line is not None:
        return line
    return (
        "ended without a result and without an exception: its process was killed (e.g. "
        "kill -9, out of memory) or its controller ended"
    )


def job_error(job: submitit.Job | None) -> str | None:
    """The error of a finished job as error.txt holds it: 'job <id>: <cause>' on the first line,
    then the last lines of its stderr without progress bars; None while it runs or if it has
    none."""
    if job is None or not job.done():
        return None
    cause = job_cause(job)
    if cause == "finished":
        return None
    text = f"job {job.job_id}: {cause}"
    tail = log_lines(job.stderr())[-10:]
    if tail:
        text += "\n\nlast lines of its stderr (progress bars left out):\n" + "\n".join(tail)
    return text


def slurm_alive(job_ids: Iterable[str]) -> set[str]:
    """The ids among job_ids ('<job>' or '<array>_<task>') that squeue still lists (queued,
    running, completing). PgoError when squeue fails for another reason than unknown ids."""
    wanted = set(job_ids)
    if not wanted or shutil.which("squeue") is None:
        return set()
    bases = sorted({j.split("_")[0] for j in wanted})
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(bases)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess([], 1, "", "squeue timed out after 30 s")
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:  # every id already gone from slurmctld's memory
            return set()
        why = (done.stderr or done.stdout).strip().splitlines()
        raise PgoError(
            f"cannot tell whether Slurm jobs {', '.join(sorted(wanted))} still run (squeue: "
            f"{why[0] if why else 'failed'}); valid: a running Slurm controller"
        )
    listed = set(done.stdout.split())
    return {j for j in wanted if j in listed or j.split("_")[0] in listed}


@dataclass
class Array:
    """The fold tasks of one submission and their jobs; ``poll`` returns each task's state.

    tasks: every fold task (of every sub-run of a sweep), in submission order.
    jobs: task index -> its submitit job, for the tasks submitted so far.
    report_job: the Slurm job that writes the report after the array (None on local).
    """

    tasks: list[FoldTask]
    jobs: dict[int, submitit.Job] = field(default_factory=dict)
    report_job: submitit.Job | None = None
    executor: submitit.Executor | None = None
    parallel: int = 0  # local only: processes at once
    folds_per_process: int = 1  # local only: at most this many folds in turn per process

    def job_ids(self) -> list[str]:
        """The scheduler ids of the jobs submitted so far (array tasks as <array>_<task>), each
        once (the folds of a FoldChain share one job)."""
        return list(dict.fromkeys(self.jobs[i].job_id for i in sorted(self.jobs)))

    def poll(self) -> list[str]:
        """Each task's state (fold_state); on local, first submits folds into free slots."""
        if self.parallel:
            self._fill_slots()
        chained = self.folds_per_process > 1
        states = [fold_state(task, self.jobs.get(i), chained) for i, task in enumerate(self.tasks)]
        return self._requeued_are_running(states)

    def _requeued_are_running(self, states: list[str]) -> list[str]:
        """A Slurm fold that failed by its job's end alone (no error.txt) but that squeue still
        lists was requeued: submitit takes the job for finished between its first run's end and
        the requeued run (the first run's record says CANCELLED DUE TO JOB REQUEUE). It is
        running; one squeue call for all such folds."""
        ended = [
            i for i, state in enumerate(states)
            if state == FAILED and isinstance(self.jobs.get(i), submitit.SlurmJob)
            and not (fold_dir(self.tasks[i].run_dir, self.tasks[i].fold) / ERROR).is_file()
        ]  # fmt: skip
        if ended:
            alive = slurm_alive(self.jobs[i].job_id for i in ended)
            for i in ended:
                if self.jobs[i].job_id in alive:
                    states[i] = RUNNING
        return states

    def _fill_slots(self) -> None:
        """Start a process in each free slot with the next folds: folds_per_process of them, or
        fewer near the end (the folds left, shared over the slots), so the slots end together."""
        running = len({job.job_id for job in self.jobs.values() if not job.done()})
        waiting = [i for i in range(len(self.tasks)) if i not in self.jobs]
        size = min(self.folds_per_process, -(-len(waiting) // self.parallel))
        while running < self.parallel and waiting:
            batch, waiting = waiting[:size], waiting[size:]
            if size == 1:
                job = self.executor.submit(self.tasks[batch[0]])
            else:
                job = self.executor.submit(FoldChain([self.tasks[i] for i in batch]))
            for i in batch:
                self.jobs[i] = job
            running += 1

    def cancel(self) -> list[int]:
        """Cancel the local jobs still running: SIGINT to their ranks (the children of each
        local controller, which then ends quietly; SIGINT to the controller itself would print
        its traceback on the launcher's terminal). Returns the task indices cancelled; Slurm
        jobs are left to Slurm. A rank that ignores SIGINT still ends with its launcher
        (FoldTask.launcher)."""
        cancelled, signalled = [], set()
        if self.parallel:
            for i, job in self.jobs.items():
                if job.done():
                    continue
                if job.job_id not in signalled:  # once per process, whatever its folds
                    signalled.add(job.job_id)
                    ranks = children(int(job.job_id))
                    for pid in ranks:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGINT)
                    if not ranks:
                        job.cancel(check=False)
                cancelled.append(i)
        return cancelled

    def errors(self) -> dict[int, str]:
        """Task index -> the scheduler's error (job_error), for tasks whose job failed."""
        out, by_job = {}, {}
        for i, job in self.jobs.items():
            if job.job_id not in by_job:
                by_job[job.job_id] = job_error(job)
            if by_job[job.job_id] is not None:
                out[i] = by_job[job.job_id]
        return out


def local_parameters(cluster: DictConfig) -> dict:
    """LocalExecutor parameters of a fold: tasks_per_node ranks, gpus, time, signal delay."""
    return {
        "timeout_min": int(cluster.time),
        "tasks_per_node": int(cluster.tasks_per_node),
        "gpus_per_node": int(cluster.gpus_per_node),
        "signal_delay_s": int(cluster.signal_delay_s),
    }


def slurm_parameters(cluster: DictConfig, name: str) -> dict:
    """AutoExecutor parameters of a fold's array task, from the cluster group.

    partition/account/qos/constraint -> --partition/--account/--qos/--constraint (null: not
    passed); time -> --time (timeout_min); mem_gb -> --mem; cpus_per_task, gpus_per_node, nodes,
    tasks_per_node -> the same sbatch options; array_parallelism -> --array=...%N;
    signal_delay_s -> --signal=USR2@N; sbatch -> any other option, passed through.
    """
    params = {
        "name": name,
        "timeout_min": int(cluster.time),
        "cpus_per_task": int(cluster.cpus_per_task),
        "gpus_per_node": int(cluster.gpus_per_node),
        "nodes": int(cluster.nodes),
        "tasks_per_node": int(cluster.tasks_per_node),
        "slurm_array_parallelism": int(cluster.array_parallelism),
        "slurm_signal_delay_s": int(cluster.signal_delay_s),
    }
    for key in ("partition", "account", "qos", "constraint"):
        if cluster[key] is not None:
            params[f"slurm_{key}"] = str(cluster[key])
    if cluster.mem_gb is not None:
        params["mem_gb"] = cluster.mem_gb
    if cluster.gpus_per_node == 0:
        del params["gpus_per_node"]  # no --gpus-per-node on CPU partitions (some sites reject 0)
    extra = OmegaConf.to_container(cluster.sbatch, resolve=True) if cluster.sbatch else {}
    if extra:
        params["slurm_additional_parameters"] = {
            str(k).replace("-", "_"): v for k, v in extra.items()
        }
    return params


def check_slurm_answers() -> None:
    """PgoError unless sbatch exists and slurmctld answers (sinfo), naming cluster=local."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise PgoError(
            "cluster=slurm: no Slurm here (sbatch/sinfo not found on PATH); valid: a machine with "
            "a Slurm client, or cluster=local to run the folds on this machine"
        )
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess([], 1, "", "sinfo timed out after 20 s")
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise PgoError(
            f"cluster=slurm: Slurm does not answer (sinfo: {why[0] if why else 'failed'}); valid: "
            "a running Slurm controller, or cluster=local to run the folds on this machine"
        )


def _local_array(
    cfg: DictConfig, folder: Path, tasks: list[FoldTask], report: Callable | None
) -> Array:
    executor = submitit.LocalExecutor(folder=folder / "%j")
    executor.update_parameters(**local_parameters(cfg.cluster))
    array = Array(
        tasks=tasks,
        executor=executor,
        parallel=max(1, int(cfg.cluster.parallel)),
        folds_per_process=int(cfg.cluster.get("folds_per_process", 1) or 1),
    )
    try:
        array.poll()  # the first folds start now
    except BaseException:
        array.cancel()
        raise
    return array


def _sbatch(submit: Callable[[], object], run_dir: Path, what: str) -> object:
    """Run a submitit Slurm submission; sbatch's refusal becomes one PgoError line with its
    message (submitit would print sbatch's stderr and raise a multi-line FailedJobError)."""
    shown = io.StringIO()
    try:
        with contextlib.redirect_stderr(shown):
            return submit()
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as err:
        lines = [re.sub(r"^sbatch:\s*(error:\s*)?", "", line.strip())
                 for line in str(err).splitlines() if line.strip()]  # fmt: skip
        message = "; ".join(dict.fromkeys(lines)) or "no message"
        raise PgoError(
            f"cluster=slurm: sbatch refused {what} of run_dir {run_dir}: {message}; nothing was "
            "submitted and the run_dir is as it was; valid: a partition, GPUs and options this "
            "cluster has (sinfo; cluster.partition, cluster.gpus_per_node, cluster.sbatch)"
        ) from None


def _slurm_array(
    cfg: DictConfig, folder: Path, tasks: list[FoldTask], report: Callable | None
) -> Array:
    check_slurm_answers()
    if not tasks:  # every fold finished already: no array, no report job
        return Array(tasks=[])
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(**slurm_parameters(cfg.cluster, f"pgo-{cfg.name}"))

    def submit_array() -> list[submitit.Job]:
        with executor.batch():
            jobs = [executor.submit(task) for task in tasks]
        return jobs

    jobs = _sbatch(submit_array, folder.parent, "the fold array")
    array = Array(tasks=tasks, jobs=dict(enumerate(jobs)), executor=executor)
    if report is not None and jobs:
        array_id = jobs[0].job_id.split("_")[0]
        try:
            array.report_job = _sbatch(
                lambda: _submit_report_job(cfg, folder, array_id, report),
                folder.parent,
                "the report job",
            )
        except BaseException:
            subprocess.run(["scancel", array_id], capture_output=True, timeout=30)
            raise
    return array


def _submit_report_job(
    cfg: DictConfig, folder: Path, array_id: str, report: Callable
) -> submitit.Job:
    """One small job after the whole array (afterany: whatever each fold's outcome) -> report()."""
    cluster = cfg.cluster
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    params = {
        "name": f"pgo-{cfg.name}-report",
        "timeout_min": REPORT_TIME_MIN,
        "cpus_per_task": 1,
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_additional_parameters": {"dependency": f"afterany:{array_id}"},
    }
    for key in ("partition", "account", "qos"):
        if cluster[key] is not None:
            params[f"slurm_{key}"] = str(cluster[key])
    executor.update_parameters(**params)
    return executor.submit(report)


ARRAYS: dict[str, Callable[[DictConfig, Path, list[FoldTask], Callable | None], Array]] = {
    "local": _local_array,
    "slurm": _slurm_array,
}


def launch_array(
    cfg: DictConfig, folder: Path, tasks: Sequence[FoldTask], report: Callable | None = None
) -> Array:
    """Submit the fold tasks with the executor of cfg.cluster.kind; logs in folder/<job id>/.

    report: a picklable no-argument callable that writes the report; on Slurm it runs as a job
    after the array (afterany), on local the caller runs it after waiting.
    """
    return ARRAYS[cfg.cluster.kind](cfg, folder, list(tasks), report)
