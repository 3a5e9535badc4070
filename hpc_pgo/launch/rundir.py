"""A run directory: its saved config, which folds it already finished, and what it refuses.

Layout (one run; a sweep has one such directory per configuration under the sweep's run_dir):

    <run_dir>/config.yaml          the resolved config (hpc_pgo.config.save_config)
    <run_dir>/fold_<k>/            what the fold entry writes (hpc_pgo.fold_outputs):
                                   predictions.csv, metrics.json (written last), modulation.csv,
                                   checkpoints/, error.txt on failure
    <run_dir>/submitit/            submitit's pickles and logs (%j, or %A_%a for array tasks)

A run directory that holds another config (another config_digest) is refused, with the keys
that differ, unless force=true (hpc_pgo.fold_outputs.refuse_other_config). Submitting the same
run again skips the folds hpc_pgo.fold_outputs.finished_or_unrecorded calls finished
(force=true reruns). A finished fold never keeps an error.txt beside its metrics.json (an
earlier, failed try's).

A submission that fails after it started writing (sbatch refuses the array, ...) puts the run
directory back as it found it: ``RunDirChanges`` records every change ``prepare_run_dir`` and
the submission make and undoes them (``rollback``), or drops its backups (``commit``).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from hpc_pgo.config import CONFIG_FILE, config_digest, save_config
from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import (
    ERROR,
    METRICS,
    finished_or_unrecorded,
    fold_dir,
    read_metrics,
    refuse_other_config,
)

SUBMITIT_DIR = "submitit"

log = logging.getLogger(__name__)


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a run_dir that cannot be a directory (check_run_dir_path), and one whose
    config.yaml has another digest than cfg, unless cfg.force.

    Raises PgoError naming the directory, the first differing keys and the ways out.
    """
    check_run_dir_path(run_dir)
    refuse_other_config(cfg, run_dir, f"run_dir {run_dir} holds another config", "override")


def check_run_dir_path(run_dir: Path) -> None:
    """PgoError when run_dir exists and is not a directory (a file, /dev/null), or when the
    nearest path above it that exists is not a directory (run_dir under a file). Reads only."""
    path = Path(run_dir)
    valid = "valid: a directory, or a path whose nearest existing parent is one (run_dir=...)"
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise PgoError(f"run_dir {path} is {_kind(path)}, not a directory; {valid}")
        return
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise PgoError(
                    f"run_dir {path} is under {parent}, which is {_kind(parent)}, not a "
                    f"directory; {valid}"
                )
            return


def _kind(path: Path) -> str:
    """What a path that is not a directory is, for a refusal."""
    if not path.exists():
        return "a dangling symbolic link"
    mode = path.stat().st_mode
    for test, name in (
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "a file"


def unwritable(run_dir: Path, err: OSError) -> PgoError:
    """The refusal of a run_dir that could not be created or written (err: what the write
    raised); the caller has put the run_dir back as it found it."""
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(run_dir) else ""
    return PgoError(
        f"run_dir {run_dir} cannot be created or written: {err.strerror or err}{where}; nothing "
        "was submitted and the run_dir is as it was; valid: a run_dir you can create and write"
    )


class RunDirChanges:
    """The changes a submission makes to its run directories, to undo them if it fails.

    Every write goes through it: ``mkdir`` (directories it creates), ``write`` (a file's old bytes
    or its absence), ``remove_file``, ``remove_tree`` (moved aside to a hidden sibling, deleted
    at ``commit``), and ``watch`` (a directory whose new entries, e.g. submitit's pickles, are
    removed). ``rollback`` undoes them newest first; ``commit`` keeps them.
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._aside: list[Path] = []

    def mkdir(self, path: Path) -> None:
        """Create path and its missing parents; rollback removes those it created (if empty,
        except path itself, which is removed with its content)."""
        path = Path(path)
        missing = []
        for p in [path, *path.parents]:
            if p.exists():
                break
            missing.append(p)
        path.mkdir(parents=True, exist_ok=True)
        for p in reversed(missing):  # outermost first: undone last
            if p == path:
                self._undo.append(lambda p=p: shutil.rmtree(p, ignore_errors=True))
            else:
                self._undo.append(lambda p=p: _rmdir_if_empty(p))

    def _remember(self, path: Path) -> None:
        path = Path(path)
        if path.is_file():
            old, mode = path.read_bytes(), path.stat().st_mode

            def restore() -> None:
                path.write_bytes(old)
                path.chmod(mode)

            self._undo.append(restore)
        else:
            self._undo.append(lambda: path.unlink(missing_ok=True))

    def write(self, path: Path, writer: Callable[[], object]) -> None:
        """Run writer(), which writes the file `path`; rollback restores the old file or none."""
        self._remember(path)
        writer()

    def remove_file(self, path: Path) -> None:
        if Path(path).is_file():
            self._remember(path)
            Path(path).unlink()

    def remove_tree(self, path: Path) -> None:
        """Move the directory aside (rollback moves it back; commit deletes it)."""
        path = Path(path)
        if not path.exists():
            return
        aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
        self._aside.append(aside)
        self._undo.append(lambda: (shutil.rmtree(path, ignore_errors=True), aside.rename(path)))

    def watch(self, directory: Path) -> None:
        """Rollback removes the entries of `directory` that are not there now."""
        directory = Path(directory)
        before = {p.name for p in directory.iterdir()} if directory.is_dir() else set()

        def undo() -> None:
            if directory.is_dir():
                for p in directory.iterdir():
                    if p.name not in before:
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

        self._undo.append(undo)

    def rollback(self) -> None:
        """Undo every change, newest first (each undo step is tried even if one fails)."""
        errors = []
        for undo in reversed(self._undo):
            try:
                undo()
            except OSError as err:
                errors.append(err)
        self._undo, self._aside = [], []
        if errors:
            raise errors[0]

    def commit(self) -> None:
        """Keep the changes; delete what remove_tree moved aside."""
        for aside in self._aside:
            shutil.rmtree(aside, ignore_errors=True)
        self._undo, self._aside = [], []


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # not empty: someone else wrote there meanwhile


def prepare_run_dir(
    cfg: DictConfig, run_dir: Path, changes: RunDirChanges | None = None
) -> list[int]:
    """Check and set up run_dir for cfg; return the folds still to run.

    Writes config.yaml (atomically), creates fold_<k>/ for every fold and submitit/, and
    removes a stale error.txt of each fold about to run, and of each finished fold (its
    metrics.json says it finished after that error), and a garbled metrics.json (not JSON, not
    an object: hpc_pgo.fold_outputs.has_metrics), whose fold is not finished and runs again. Finished folds
    (hpc_pgo.fold_outputs.finished_or_unrecorded) are left out unless cfg.force. With force=true every selected fold starts from nothing: its directory
    (checkpoints of a possibly different config included) is emptied first, and the config is
    saved with force=false, so that a requeued fold resumes instead of restarting. With
    `changes`, every change is recorded there (RunDirChanges) so that a failed submission can
    undo it.
    """
    own = changes is None
    changes = RunDirChanges() if own else changes
    check_run_dir(cfg, run_dir)
    saved = cfg.copy()
    saved.force = False
    changes.mkdir(run_dir)
    changes.write(run_dir / CONFIG_FILE, lambda: save_config(saved, run_dir))
    changes.mkdir(run_dir / SUBMITIT_DIR)
    digest = config_digest(cfg)
    todo = []
    for fold in cfg.folds:
        out = fold_dir(run_dir, fold)
        if cfg.force:
            changes.remove_tree(out)
        changes.mkdir(out)
        changes.remove_file(out / ERROR)  # never beside metrics.json, never before a rerun
        metrics = read_metrics(out)
        if metrics is None and (out / METRICS).is_file():
            # garbled (not JSON, not an object): not finished; the fold trains again and writes
            # a new one (atomically); until then nothing may take the old file for "done"
            log.warning("%s is not a readable metrics object: fold %d runs again", out / METRICS,
                        fold)  # fmt: skip
            changes.remove_file(out / METRICS)
        if finished_or_unrecorded(metrics, digest):
            continue
        todo.append(int(fold))
    if own:
        changes.commit()
    return todo
