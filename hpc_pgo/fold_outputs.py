"""What one fold of a run leaves on disk, when it counts as finished, and what it refuses.

The single owner of a fold's file names, its directory, the "finished" rule and the refusal of
another config. The fold entries (hpc_pgo.train.fold, hpc_pgo.train.coxph) write these files;
the launcher (hpc_pgo.launch: run directory, tasks, status, report) reads them. This module
imports nothing from either side.

Layout, in ``fold_dir(run_dir, k)`` = ``<run_dir>/fold_<k>/``:

    config.yaml        FOLD_CONFIG   the resolved config the fold trained (compared on resume)
    standardizer.json  STANDARDIZER  omics z-score statistics of the fold's train patients
    modulation.csv     MODULATION    one row per optimizer step (rho, k, loss, branch C-index)
    tensorboard/       TENSORBOARD   the same scalars for TensorBoard
    checkpoints/       CHECKPOINTS   the newest DeepSpeed checkpoint (``latest`` names it)
    predictions.csv    PREDICTIONS   one row per test unit (hpc_pgo.survival.read_predictions);
                                     with a bag encoder one per test patient, unit "bag"
    attention.csv      ATTENTION     model.image.encoder=abmil: each test tile's attention weight
    metrics.json       METRICS       the fold's scores, with the config digest under DIGEST_KEY;
                                     written LAST
    error.txt          ERROR         a failed try: the one-line cause, then details
    .lock              LOCK          the claim of the job training the fold (hpc_pgo.launch.locks)

A finished fold has predictions.csv and metrics.json, and never an error.txt beside them (a
stale one is removed). A readable metrics.json (``has_metrics``: JSON, an object) means the fold
entry has returned (the launcher's job status "done"); a garbled one means nothing, and the fold
is trained again. "finished" also looks at the config digest it records:

- ``finished``: metrics.json records this config's digest. The fold entries return such a
  fold's metrics instead of training it again.
- ``finished_or_unrecorded``: the same, or metrics.json records no digest at all. The launcher
  skips such a fold when the run is submitted again (launch.fold_fn may name any fold entry,
  and one that records no digest is trusted as finished).

A metrics.json under another digest is never finished. A directory whose saved config.yaml is
another config (another config_digest, execution keys aside) is refused by
``refuse_other_config``, naming the keys that differ, unless force=true.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpc_pgo.config import CONFIG_FILE, EXECUTION_KEYS, config_digest, load_config
from hpc_pgo.errors import PgoError

FOLD_CONFIG = CONFIG_FILE
STANDARDIZER = "standardizer.json"
MODULATION = "modulation.csv"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
PREDICTIONS = "predictions.csv"
ATTENTION = "attention.csv"
METRICS = "metrics.json"
ERROR = "error.txt"
LOCK = ".lock"
DIGEST_KEY = "config_digest"  # the key of metrics.json that records the fold's config digest
_MAX_SHOWN = 6  # differing keys shown in a refusal


def fold_dir(run_dir: str | os.PathLike, fold: int) -> Path:
    """Where fold k of a run writes: <run_dir>/fold_<k>."""
    return Path(run_dir) / f"fold_{fold}"


def read_metrics(out: Path) -> dict | None:
    """metrics.json of a fold directory, or None when absent or unreadable (an unfinished fold)."""
    try:
        metrics = json.loads((Path(out) / METRICS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return metrics if isinstance(metrics, dict) else None


def has_metrics(out: Path) -> bool:
    """Whether a fold directory holds a readable metrics.json (read_metrics): the fold entry has
    returned. A garbled one (not JSON, not an object) does not count: the fold is unfinished,
    trained again (prepare_run_dir removes the file first) and writes a new one atomically."""
    return read_metrics(out) is not None


def finished(metrics: Mapping[str, Any] | None, digest: str) -> bool:
    """True when `metrics` (read_metrics) records the config digest `digest`.

    The fold entries' rule (hpc_pgo.train.fold.train_fold): they return a fold's metrics
    instead of training it again only when the fold was trained under this very config.
    """
    return metrics is not None and metrics.get(DIGEST_KEY) == digest


def finished_or_unrecorded(metrics: Mapping[str, Any] | None, digest: str) -> bool:
    """True when `metrics` (read_metrics) records `digest`, or records no digest at all.

    The launcher's skip rule (hpc_pgo.launch.rundir.prepare_run_dir): launch.fold_fn may name
    any fold entry, and the metrics of one that records no digest are trusted rather than
    trained again at every submission. A recorded digest of another config is not finished.
    """
    return metrics is not None and metrics.get(DIGEST_KEY) in (None, digest)


def _leaves(tree: object, prefix: str = "") -> dict[str, object]:
    """{'train.lr': 0.002, ...}: the dotted leaves of a nested container."""
    if isinstance(tree, dict) and tree:
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def config_changes(
    old: DictConfig, new: DictConfig, exclude: Sequence[str] = EXECUTION_KEYS
) -> list[str]:
    """'key: old -> new' for every key whose value differs, sorted (the `exclude` keys and their
    children ignored); a key present in one config only shows '(absent)' on the other side."""

    def kept(cfg: DictConfig) -> dict[str, object]:
        flat = _leaves(OmegaConf.to_container(cfg, resolve=True))
        return {
            k: v
            for k, v in flat.items()
            if not any(k == e or k.startswith(e + ".") for e in exclude)
        }

    a, b = kept(old), kept(new)
    return [
        f"{key}: {a.get(key, '(absent)')} -> {b.get(key, '(absent)')}"
        for key in sorted(set(a) | set(b))
        if a.get(key, "(absent)") != b.get(key, "(absent)")
    ]


def refuse_other_config(cfg: DictConfig, directory: Path, refused: str, force_does: str) -> None:
    """Refuse to go on in `directory` (a run directory, a fold's) when the config.yaml saved
    there is another config than cfg: another config_digest (execution keys aside).

    No saved config.yaml, or cfg.force: nothing is refused. Otherwise raises PgoError, on one
    line: '<refused> (<the first differing keys>); valid: the same config, another run_dir, or
    force=true to <force_does>'.
    """
    saved = Path(directory) / CONFIG_FILE
    if not saved.is_file() or cfg.force:
        return
    old = load_config(saved)
    if config_digest(old) == config_digest(cfg):
        return
    diff = config_changes(old, cfg) or ["(the digests differ)"]
    shown = "; ".join(diff[:_MAX_SHOWN]) + (
        f"; ... {len(diff) - _MAX_SHOWN} more" if len(diff) > _MAX_SHOWN else ""
    )
    raise PgoError(
        f"{refused} ({shown}); valid: the same config, another run_dir, or force=true to "
        f"{force_does}"
    )
