"""A run directory: its saved config, which folds it already finished, and what it refuses.

Layout (one run; a sweep has one such directory per configuration under the sweep's run_dir):

    <run_dir>/config.yaml          the resolved config (hpc_pgo.config.save_config)
    <run_dir>/fold_<k>/            what the fold entry writes: predictions.csv, metrics.json
                                   (written last: the fold is finished), modulation.csv,
                                   checkpoints/, error.txt on failure
    <run_dir>/submitit/            submitit's pickles and logs (%j, or %A_%a for array tasks)

A run directory that holds another config (another config_digest) is refused, with the keys
that differ, unless force=true. A fold is finished when fold_<k>/metrics.json exists and records
the run's config digest; submitting the same run again skips finished folds (force=true reruns).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hpc_pgo.config import CONFIG_FILE, EXECUTION_KEYS, config_digest, load_config, save_config
from hpc_pgo.errors import PgoError
from hpc_pgo.launch.plan import fold_dir
from hpc_pgo.launch.task import ERROR_FILE, METRICS_FILE

SUBMITIT_DIR = "submitit"
DIGEST_KEY = "config_digest"  # the key of metrics.json that records the fold's config digest
_MAX_SHOWN = 6  # differing keys shown in the refusal line


def _leaves(tree: object, prefix: str = "") -> dict[str, object]:
    """{'train.lr': 0.002, ...}: the dotted leaves of a nested container."""
    if isinstance(tree, dict) and tree:
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _without(keys: dict[str, object], excluded: tuple[str, ...]) -> dict[str, object]:
    return {
        k: v for k, v in keys.items() if not any(k == e or k.startswith(e + ".") for e in excluded)
    }


def config_difference(old: DictConfig, new: DictConfig) -> list[str]:
    """The keys whose values differ, as 'key: old -> new' (execution keys ignored), sorted.

    A key present in one config only shows '(absent)' on the other side.
    """
    a = _without(_leaves(OmegaConf.to_container(old, resolve=True)), EXECUTION_KEYS)
    b = _without(_leaves(OmegaConf.to_container(new, resolve=True)), EXECUTION_KEYS)
    lines = []
    for key in sorted(set(a) | set(b)):
        before, after = a.get(key, "(absent)"), b.get(key, "(absent)")
        if before != after:
            lines.append(f"{key}: {before} -> {after}")
    return lines


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a run_dir whose config.yaml has another digest than cfg, unless cfg.force.

    Raises PgoError naming the directory, the first differing keys and the ways out.
    """
    saved = run_dir / CONFIG_FILE
    if not saved.is_file() or cfg.force:
        return
    old = load_config(saved)
    if config_digest(old) == config_digest(cfg):
        return
    diff = config_difference(old, cfg) or ["(the digests differ)"]
    shown = "; ".join(diff[:_MAX_SHOWN]) + (
        f"; ... {len(diff) - _MAX_SHOWN} more" if len(diff) > _MAX_SHOWN else ""
    )
    raise PgoError(
        f"run_dir {run_dir} holds another config ({shown}); valid: the same config, another "
        "run_dir, or force=true to override"
    )


def fold_finished(run_dir: Path, fold: int, digest: str) -> bool:
    """True when fold_<k>/metrics.json exists and records `digest` (or records none)."""
    path = fold_dir(run_dir, fold) / METRICS_FILE
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get(DIGEST_KEY)
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return False
    return recorded is None or recorded == digest


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> list[int]:
    """Check and set up run_dir for cfg; return the folds still to run.

    Writes config.yaml (atomically), creates fold_<k>/ for every fold and submitit/, and
    removes a stale error.txt of each fold about to run. Finished folds (fold_finished) are
    left out unless cfg.force. With force=true every selected fold starts from nothing: its
    directory (checkpoints of a possibly different config included) is emptied first, and the
    config is saved with force=false, so that a requeued fold resumes instead of restarting.
    """
    check_run_dir(cfg, run_dir)
    saved = cfg.copy()
    saved.force = False
    save_config(saved, run_dir)
    (run_dir / SUBMITIT_DIR).mkdir(parents=True, exist_ok=True)
    digest = config_digest(cfg)
    todo = []
    for fold in cfg.folds:
        out = fold_dir(run_dir, fold)
        if cfg.force and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if fold_finished(run_dir, fold, digest):
            continue
        (out / ERROR_FILE).unlink(missing_ok=True)
        todo.append(int(fold))
    return todo
