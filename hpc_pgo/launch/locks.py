"""Who may write a run directory and train a fold: the launcher's lock and the folds' claims.

Two submissions into one run_dir must never train the same fold at once (their checkpoints and
outputs would overwrite each other). Two locks see to it, both released by the kernel when
their process dies (a killed launcher or job never leaves a stale lock behind):

- ``RunDirLock``: ``flock`` on the run directory itself (no file is added), taken by
  ``launch/submit.py`` while it checks, writes and submits; on cluster=local with wait=true it
  is held until the folds have finished (the launcher hands the folds out one slot at a time).
  A second launcher is refused with the holder's pid and command line (/proc/locks).
- ``FoldLock``: every rank of a fold task claims ``fold_<k>/.lock`` for the whole call. The file
  records the claiming job (JSON: job, kind, host, pid, since, state); POSIX record locks on two
  bytes of it make the claim: byte 0 is a short mutex around reading and changing the record,
  byte 1 is held shared by every running rank of the claiming job. A rank of another job finds
  byte 1 held and refuses (``FoldBusy``) without touching the fold; all ranks of a job decide
  the same way, so a refused multi-rank job never leaves a rank waiting for its peers. A
  requeued task keeps its job id (Slurm ``<array>_<task>``, the local controller's pid) and takes
  its fold back. POSIX locks (``lockf``), not ``flock``: they are not inherited by forked
  DataLoader workers, so the claim ends exactly when the rank process does.

A Slurm array task may wait in the queue long after its launcher exited: the launcher records
``state: submitted`` claims for its array tasks, and ``fold_holder`` asks squeue whether such a
job is still queued (``slurm_alive``). Locking needs a file system with working locks (local
disks; NFS with lockd; Lustre mounted with -o flock).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import LOCK

_MUTEX, _HOLD = 0, 1  # byte offsets in the lock file: the record's mutex, the running ranks' lock
_BUSY = (errno.EACCES, errno.EAGAIN)  # what lockf/flock raise for a lock held elsewhere
SUBMITTED, RUNNING = "submitted", "running"


class FoldBusy(PgoError):
    """A fold is claimed by a live job of another submission (the message names it)."""


# --------------------------------------------------------------------------- the launcher's lock


def _proc_cmdline(pid: int, limit: int = 120) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    # one line whatever the arguments hold (python -c scripts have newlines)
    text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flock_holders(path: Path) -> list[int]:
    """Pids of this host's processes holding a flock on `path` (from /proc/locks)."""
    st = os.stat(path)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF"; waiters have "->" after "1:"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            pids.append(int(fields[4]))
    return pids


class RunDirLock:
    """An exclusive flock on a run directory, held by one launcher (see the module text)."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir = run_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunDirLock:
        """Lock run_dir (which must exist) or raise PgoError naming the launcher that holds it."""
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in _BUSY + (errno.EWOULDBLOCK,):
                raise PgoError(
                    f"run_dir {run_dir}: cannot lock it ({err.strerror}); valid: a run_dir on a "
                    "file system with flock (a local disk, NFS with locking, Lustre -o flock)"
                ) from err
            holders = [p for p in flock_holders(run_dir) if p != os.getpid()]
            who = (
                f"pid {holders[0]} on this host: {_proc_cmdline(holders[0])}"
                if holders
                else "a process on another host"
            )
            raise PgoError(
                f"run_dir {run_dir} is in use by another launch/submit.py ({who}); valid: wait "
                "until it has finished, or another run_dir"
            ) from None
        return cls(run_dir, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (closing the descriptor ends the flock); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


# --------------------------------------------------------------------------- the folds' claims


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _read_record(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        record = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = {}
    return record if isinstance(record, dict) else {}


def _write_record(fd: int, record: dict) -> None:
    """Rewrite the record in place: the lock file's inode must stay (locks live on it)."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _try_lock(fd: int, kind: int, offset: int) -> bool:
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, 1, offset)
    except OSError as err:
        if err.errno in _BUSY:
            return False
        raise
    return True


def _running_elsewhere(fd: int) -> bool:
    """True when a process holds the running ranks' byte (call with the mutex held)."""
    if _try_lock(fd, fcntl.LOCK_EX, _HOLD):
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _HOLD)
        return False
    return True


def describe(record: dict) -> str:
    """'running as job 12_3 (host h, pid 42, since ...)' or 'queued as Slurm job 12_3 (...)'."""
    job = record.get("job", "?")
    if record.get("state") == SUBMITTED:
        return f"queued as Slurm job {job} (submitted {record.get('since', '?')})"
    return (
        f"running as job {job} (host {record.get('host', '?')}, pid {record.get('pid', '?')}, "
        f"since {record.get('since', '?')})"
    )


class FoldLock:
    """A fold claimed by the job running this rank; ``release`` (or process death) ends it."""

    def __init__(self, path: Path, fd: int, record: dict) -> None:
        self.path = path
        self.record = record
        self._fd: int | None = fd

    @classmethod
    def take(cls, out: Path, job: str, kind: str) -> FoldLock:
        """Claim fold directory `out` for job `job` (every rank calls it), or raise FoldBusy.

        Free: no record, a record of this same job (a requeued task, or the launcher's
        'submitted' record), or a record of another job that no process runs any more.
        """
        out.mkdir(parents=True, exist_ok=True)
        path = out / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, _MUTEX)
            try:
                record = _read_record(fd)
                if record.get("job") != job or record.get("state") != RUNNING:
                    if record.get("job") != job and _running_elsewhere(fd):
                        raise FoldBusy(
                            f"{out} is {describe(record)}; this job ({job}) leaves it alone; "
                            "valid: one submission per fold at a time (wait for that job, or "
                            "scancel it)"
                        )
                    record = {"job": job, "kind": kind, "state": RUNNING, "host":
                              socket.gethostname(), "pid": os.getpid(), "since": _now()}  # fmt: skip
                    _write_record(fd, record)
                # shared: the other ranks of this job hold it too; nobody else can hold it now
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, _HOLD)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, _MUTEX)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, record)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # ends this process's POSIX locks on the file
            self._fd = None

    def __enter__(self) -> FoldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def fold_holder(
    out: Path, slurm_alive: Callable[[Iterable[str]], set[str]] | None = None
) -> dict | None:
    """The record of the job that holds fold directory `out` (describe() words it), or None.

    Running: a process holds the running ranks' byte. Queued: the record is a launcher's
    'submitted' claim of a Slurm job that slurm_alive (the ids squeue lists) still lists.
    """
    path = out / LOCK
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, _MUTEX)
        record = _read_record(fd)
        running = _running_elsewhere(fd)
    finally:
        os.close(fd)  # ends the mutex too
    if running:
        return {**record, "state": RUNNING}
    if record.get("state") == SUBMITTED and slurm_alive is not None:
        if record.get("job") in slurm_alive([record["job"]]):
            return record
    return None


def claim_submitted(out: Path, job: str) -> None:
    """The launcher's record that Slurm job `job` will train fold directory `out` (queued).

    Left as it is when the job already runs (its record is newer) or another one runs.
    """
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, _MUTEX)
        record = _read_record(fd)
        if record.get("job") != job and not _running_elsewhere(fd):
            _write_record(fd, {"job": job, "kind": "slurm", "state": SUBMITTED, "host":
                               socket.gethostname(), "pid": os.getpid(), "since": _now()})  # fmt: skip
    finally:
        os.close(fd)
