"""A test-only pause of a long-running loop at a known step: ``HPC_PGO_HOLD=<point>:<step>:<dir>``.

A test that stops, signals or kills a running job must know where the job is when the signal
lands; polling its outputs and then signalling races it (a fast machine finishes first, a slow
one is signalled before anything was written). With the variable set, the loop named <point>
pauses once, at one defined place of step <step>, until the test has acted. Never set it in a
real run: it exists for the tests.

Points (each loop reads the variable once, at its start, with ``Hold.from_env``, and calls
``Hold.at`` at one place per step; unset or naming another point, a loop pays one ``is None``
per step):

    fold      hpc_pgo.train.fold: after optimizer step k (the k-th of the fold, counted over
              calls) and the checkpoint of step k when it is a checkpoint step, before the
              stop-request check of step k
    pretrain  hpc_pgo.train.pretrain: after optimizer step k and its periodic checkpoint, before
              the stop-request check (any_rank(_stop_requested)) of step k
    build     hpc_pgo.data.build.write_shards: after the samples of the k-th patient went into the
              staged shard set (the temporary .<out>.tmp-* directory holds an open shard)
    embed     hpc_pgo.data.embed_tiles: after the k-th shard of the manifest (1-based) was
              embedded, its pair of files and tile_features/progress.json written; a resumed run
              skips the shards done and does not hold at them again

At the hold, rank r (0 in a single process) writes ``<dir>/held.rank<r>`` atomically (JSON: point,
step, rank, pid, host) and polls every POLL_S seconds until

- ``<dir>/release`` exists: the loop goes on (``release(dir)`` writes it), or
- the loop's stop request is set (the flag its signal handler sets, e.g. on submitit's USR2):
  the stop-request check that follows stops the loop at step k exactly;

then writes ``<dir>/released.rank<r>`` (JSON: the marker's fields and ``"by": "release" | "stop"``).
After ``timeout_s`` (TIMEOUT_S, 10 min) with neither, it raises TimeoutError: a forgotten hold
fails its job, it never hangs it. A signal whose handler raises (SIGTERM in pgo-shards) or a
SIGKILL (scancel) ends the process while it waits.

It triggers at exactly step k: a run resumed from step k's checkpoint starts after it and does
not hold again, while every fresh run that reaches step k holds again (in the same directory: a
test gives each run its own). Every rank of a multi-rank loop holds; a signal to the job reaches
all of them (scancel --signal, submitit's local controller), each releases on its own flag.

The variable travels like any other: submitit's local executor starts its processes with the
submitter's environment, and sbatch exports it by default (--export=ALL); a requeued Slurm job
keeps it. Tests build the value with ``spec()`` and wait with ``wait_held()``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpc_pgo.atomic import write_text

log = logging.getLogger(__name__)

ENV = "HPC_PGO_HOLD"
POINTS = ("fold", "pretrain", "build", "embed")
RELEASE = "release"
TIMEOUT_S = 600.0
POLL_S = 0.05


def spec(point: str, step: int, directory: str | os.PathLike) -> str:
    """The value of HPC_PGO_HOLD that holds `point` after step `step`, with its files in `directory`."""
    value = f"{point}:{int(step)}:{Path(directory).absolute()}"
    _parse(value)
    return value


def _parse(value: str) -> tuple[str, int, Path]:
    point, _, rest = value.partition(":")
    step, _, directory = rest.partition(":")
    if point not in POINTS or not step.isdigit() or int(step) < 1 or not directory:
        raise ValueError(
            f"{ENV}={value!r} is not valid; valid: <point>:<step>:<dir> with point one of "
            f"{', '.join(POINTS)}, step an integer >= 1 and dir a directory (test-only variable)"
        )
    return point, int(step), Path(directory)


def marker(directory: str | os.PathLike, rank: int = 0) -> Path:
    """The file rank `rank` writes when it is held: <dir>/held.rank<r>."""
    return Path(directory) / f"held.rank{rank}"


def released_marker(directory: str | os.PathLike, rank: int = 0) -> Path:
    """The file rank `rank` writes when its hold ends: <dir>/released.rank<r>."""
    return Path(directory) / f"released.rank{rank}"


def release(directory: str | os.PathLike) -> None:
    """Let every loop held in `directory` go on (writes <dir>/release)."""
    write_text(Path(directory) / RELEASE, "release\n")


@dataclass(frozen=True)
class Hold:
    """One loop's hold: pause at `step` of `point` on `rank`, files in `directory`."""

    point: str
    step: int
    directory: Path
    rank: int = 0
    timeout_s: float = TIMEOUT_S

    @classmethod
    def from_env(
        cls, point: str, *, rank: int = 0, environ: Mapping[str, str] | None = None
    ) -> Hold | None:
        """The hold HPC_PGO_HOLD asks of loop `point` on `rank`; None when unset or for another
        point. environ defaults to os.environ. Raises ValueError on a malformed value."""
        value = (os.environ if environ is None else environ).get(ENV)
        if not value:
            return None
        name, step, directory = _parse(value)
        return cls(name, step, directory, rank) if name == point else None

    def at(self, step: int, stop: Callable[[], bool] | None = None) -> None:
        """Hold here when `step` is the hold's step (module docstring); otherwise return at once.

        stop: the loop's stop request (its signal handler's flag), polled with the release file.
        Raises TimeoutError after timeout_s with neither.
        """
        if step != self.step:
            return
        facts = {"point": self.point, "step": step, "rank": self.rank, "pid": os.getpid(),
                 "host": socket.gethostname()}  # fmt: skip
        write_text(marker(self.directory, self.rank), json.dumps(facts) + "\n")
        log.warning("%s: %s held after step %d on rank %d, until %s/%s or a stop request",
                    ENV, self.point, step, self.rank, self.directory, RELEASE)  # fmt: skip
        deadline = time.monotonic() + self.timeout_s
        release_file = self.directory / RELEASE
        while True:
            if stop is not None and stop():
                by = "stop"
                break
            if release_file.exists():
                by = "release"
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{ENV}: {self.point} held after step {step} on rank {self.rank} for "
                    f"{self.timeout_s:g} s, and neither {release_file} appeared nor was a stop "
                    "requested; a test set the variable and did not act (it is test-only)"
                )
            time.sleep(POLL_S)
        write_text(
            released_marker(self.directory, self.rank), json.dumps({**facts, "by": by}) + "\n"
        )


def wait_held(
    directory: str | os.PathLike,
    ranks: int = 1,
    *,
    timeout_s: float = TIMEOUT_S,
    running: Callable[[], bool] | None = None,
) -> list[dict]:
    """Wait until ranks 0..ranks-1 are held in `directory`; their markers' content, by rank.

    running: False once the held process or job has ended (e.g. ``lambda: proc.poll() is None``):
    then RuntimeError, since it can no longer reach the hold. TimeoutError after timeout_s.
    """
    paths = [marker(directory, r) for r in range(ranks)]
    deadline = time.monotonic() + timeout_s
    while not all(p.is_file() for p in paths):
        if running is not None and not running():
            # it may have written the last marker just before it ended
            if all(p.is_file() for p in paths):
                break
            raise RuntimeError(
                f"ended before {len(paths)} rank(s) held in {directory} "
                f"(held: {sorted(p.name for p in paths if p.is_file())})"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"not held in {directory} after {timeout_s:g} s "
                f"(held: {sorted(p.name for p in paths if p.is_file())} of {len(paths)} ranks)"
            )
        time.sleep(POLL_S)
    return [json.loads(p.read_text()) for p in paths]
