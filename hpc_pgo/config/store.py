"""The resolved config beside a run's outputs (run_dir/config.yaml), and a digest to compare configs."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hpc_pgo.config.compose import load_yaml
from hpc_pgo.errors import PgoError

CONFIG_FILE = "config.yaml"

# Keys that say where, how and which folds run, not what a fold computes: two configs that
# differ only here train the same models, so a run may be resumed or extended across them.
EXECUTION_KEYS = (
    "name", "run_dir", "folds", "seeds", "force", "wait", "cluster", "groups.cluster",
    "train.num_workers", "train.checkpoint_every", "train.steps_per_checkpoint",
    "train.stop_after_steps", "train.stop_after_minutes",
)  # fmt: skip


# Keys added to the model config after run directories were written without them: left out of
# config_digest while unused (model.image.encoder=backbone, the only behaviour before them), so a
# run directory of an earlier config resumes and its finished folds are still finished.
# (model.image path, absent or equal to this value -> drop these model.image keys)
UNUSED_ADDITIONS = (("encoder", "backbone", ("encoder", "bag")),)


# Keys added to the whole config later, left out of config_digest while null (their value before
# they existed): data.tile_features, the feature set a bag encoder trains on (filled at submit),
# is null for every model that reads no bags, so those models' digests are what they were.
UNUSED_NULL_KEYS = ("data.tile_features",)


def drop_unused_nulls(tree: dict) -> None:
    """Remove UNUSED_NULL_KEYS whose value is null from a whole config tree (a dict), in place."""
    for key in UNUSED_NULL_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf, None) is None:
            node.pop(leaf, None)


def drop_unused_additions(model: dict) -> None:
    """Remove UNUSED_ADDITIONS from a model config tree (cfg.model as a dict), in place."""
    image = model.get("image") if isinstance(model, dict) else None
    if not isinstance(image, dict):
        return
    for key, unused, drop in UNUSED_ADDITIONS:
        if image.get(key, unused) == unused:
            for name in drop:
                image.pop(name, None)


def save_config(cfg: DictConfig, run_dir: str | os.PathLike) -> Path:
    """Write cfg, resolved, to run_dir/config.yaml atomically and return that path.

    The YAML goes to a temporary file in run_dir (created if missing), is flushed to disk, then
    renamed over config.yaml: a reader sees the old file or the new one, never a partial one, and
    a failed write leaves no temporary file behind.
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(cfg, resolve=True)
    target = folder / CONFIG_FILE
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{CONFIG_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def load_config(path: str | os.PathLike) -> DictConfig:
    """A config written by save_config (a run directory or its config.yaml), in struct mode."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise PgoError(f"no saved config at {path}; valid: a run directory holding {CONFIG_FILE}")
    cfg = load_yaml(path)
    OmegaConf.set_struct(cfg, True)
    return cfg


def config_digest(cfg: DictConfig, exclude: Iterable[str] = EXECUTION_KEYS) -> str:
    """SHA-256 (hex) of the resolved config without the `exclude` keys (dotted paths).

    Canonical form: JSON with sorted keys and no whitespace, so the digest does not depend on
    key order or formatting; 1 and 1.0 differ (an int and a float are different settings).
    Model keys added later are left out while unused (UNUSED_ADDITIONS), other keys added later
    while null (UNUSED_NULL_KEYS).
    """
    tree = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(tree, dict):
        drop_unused_additions(tree.get("model"))
        drop_unused_nulls(tree)
    for key in exclude:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
