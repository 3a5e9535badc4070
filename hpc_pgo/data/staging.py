"""Writing an output directory all at once: a new shard set (build, cells) appears whole or not at all.

``staged_output(out)`` yields an empty temporary sibling ``.<out>.tmp-<host>-<pid>`` to write
into; on success it replaces `out` by renames (an old set is moved aside, then deleted; renamed
back if the second rename fails); on any error it deletes the stage and the parents it created.
Stages left by killed processes on this host are deleted first. An OSError (read-only file
system, no permission, disk full, quota) becomes one PgoError line naming the path, what is left
and what to do. ``check_output_dir`` refuses to replace anything but an empty directory or, with
--force, a shard set.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from hpc_pgo.data.members import MANIFEST
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)


def check_output_dir(
    out: Path,
    force: bool,
    *,
    marker: str = MANIFEST,
    what: str = "a shard set",
    name: str = "output",
) -> None:
    """Refuse to replace anything but an empty directory or (with force) `what`, a directory
    holding `marker`; errors start with `name` (the option that gave `out`) and `out`."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PgoError(f"{name} {out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    bare = what.split(" ", 1)[1]
    if not (out / marker).is_file():
        raise PgoError(
            f"{name} {out}: not empty and holds no {bare} ({marker}); refusing to replace it"
        )
    if not force:
        raise PgoError(f"{name} {out}: already holds {what}; pass --force to replace it")


def _make_parents(path: Path, created: list[Path]) -> None:
    """Create the missing parents of `path`, adding each to `created` as soon as it exists (so
    that a failure half-way still knows what to remove)."""
    for parent in [*reversed(path.parents)]:
        if not parent.exists():
            parent.mkdir()
            created.append(parent)


def _place(tmp: Path, out: Path) -> None:
    """Move the finished shard set to `out`, replacing an old one (rename, rename, delete);
    when the second rename fails the old set is renamed back."""
    if out.exists() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{_owner()}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


# errno -> what to do, for the file-system errors an output meets
_OUTPUT_HINTS = {
    errno.ENOSPC: "free some space or give another --out",
    errno.EDQUOT: "the disk quota is exceeded; free some space or give another --out",
    errno.EROFS: "the file system is mounted read-only; give another --out",
    errno.EACCES: "give a writable --out",
    errno.EPERM: "give a writable --out",
}


def os_error_text(exc: OSError, default_path: Path | str | None = None) -> str:
    """`<path>: <reason> [ERRNO]` of an OSError, for an `error:` line; a failed write() names no
    path (then `default_path`), a rename names two (`src -> dst`)."""
    name = errno.errorcode.get(exc.errno or 0)
    reason = (exc.strerror or str(exc)) + (f" [{name}]" if name else "")
    path = exc.filename if exc.filename is not None else default_path
    if path is not None and exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    return reason if path is None else f"{path}: {reason}"


def _output_side(path: str | os.PathLike | None, out: Path) -> bool:
    """Whether a failing path is the output's (`out`, its parents, its temporary siblings and
    what is in them), not an input's; a failed write() names no path: the output's."""
    if path is None or not isinstance(path, str | os.PathLike):
        return True
    p = Path(os.path.abspath(path))
    return p in out.parents or any(
        q == out or (q.parent == out.parent and q.name.startswith(f".{out.name}."))
        for q in (p, *p.parents)
    )


def output_error(exc: OSError, out: Path, kept: bool) -> PgoError:
    """The one-line error for an OSError met while a shard set for `out` was being made: the
    path (`out` when the system names none), the reason, what is left (`kept`: the shard set
    that was there before, unchanged) and, for the output's paths, what to do."""
    left = "the shard set there is unchanged" if kept else "nothing was left there"
    hint = _OUTPUT_HINTS.get(exc.errno or 0) if _output_side(exc.filename, out) else None
    return PgoError(
        f"{os_error_text(exc, out)} while building {out}; {left}" + (f"; {hint}" if hint else "")
    )


def _owner() -> str:
    """'<host>-<pid>': names this process's temporary siblings of an output directory."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_stages(out: Path) -> list[Path]:
    """Delete the temporary siblings of `out` (.<name>.tmp-<host>-<pid>, .<name>.old-<host>-<pid>)
    left by builds on THIS host whose process is gone (killed with SIGKILL, or the node lost
    power); another host's, or a live process's, are left alone. Returns what was deleted."""
    host = socket.gethostname()
    removed = []
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            owner = path.name[len(f".{out.name}.{kind}-") :]
            owner_host, _, pid = owner.rpartition("-")
            if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `out` to write a shard set into; on success move it to
    `out` (replacing an old set), on any error delete it and the parents this call created.
    Leftovers of killed builds on this host are deleted first (remove_stale_stages).

    An OSError on the way (read-only file system, no permission, disk full, quota) becomes a
    PgoError (output_error): one line naming the path, after the same cleanup.
    """
    kept = out.is_dir() and any(out.iterdir())
    created: list[Path] = []
    tmp = out.with_name(f".{out.name}.tmp-{_owner()}")
    try:
        _make_parents(out, created)
        for stale in remove_stale_stages(out):
            log.warning("removed %s, left by a build that was killed", stale)
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this pid's earlier, killed build
        tmp.mkdir()
        yield tmp
        _place(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
        if isinstance(exc, OSError):
            raise output_error(exc, out, kept) from None
        raise
