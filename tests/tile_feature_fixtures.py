"""Test helper: write the tile-feature side-car (hpc_pgo.data.tile_features) of a shard set.

For the loader's tests, where the values need only be known: for every shard of the manifest,
the features of its samples in tar order, one pair of files per shard, and the manifest record,
with ``key_features`` a deterministic vector per key, and a way to write a side-car that lacks a
patient. The fold's tests run the real `pgo-shards embed-tiles` (hpc_pgo.data.embed_tiles).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hpc_pgo.data.shards import read_manifest, write_manifest
from hpc_pgo.data.tarindex import index_shards
from hpc_pgo.data.tile_features import DIRECTORY, RECORD_KEY, recipe_digest, write_shard_features

# features(shard_dir, manifest, shard name, keys in tar order) -> (n, D)
Features = Callable[[Path, dict, str, Sequence[str]], np.ndarray]


def key_features(dim: int = 6) -> Features:
    """Features that are a fixed function of each key (blake2b-seeded normal values)."""

    def features(shard_dir: Path, manifest: dict, name: str, keys: Sequence[str]) -> np.ndarray:
        rows = []
        for key in keys:
            seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
            rows.append(np.random.default_rng(seed).normal(size=dim))
        return np.asarray(rows, dtype=np.float32).reshape(len(keys), dim)

    features.backbone = {"arch": "key-hash", "digest": "0" * 64, "num_features": dim}
    return features


def write_tile_features(shard_dir: Path, features: Features, *, drop: str | None = None) -> dict:
    """Write the side-car of every shard and the manifest record; returns the record.

    drop: a patient whose rows are written under the keys of another patient of the same shard
    (so the side-car, still well-formed, holds no feature of `drop`): for the refusal tests.
    """
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    index = index_shards(shard_dir, manifest)
    entries, units, dim = [], 0, None
    for name, keys in index.shards:
        keys = list(keys)
        values = np.asarray(features(shard_dir, manifest, name, keys))
        dim = values.shape[1]
        if drop is not None:
            other = next((k for k in keys if index.patient_of[k] != drop), None)
            keys = [other if index.patient_of[k] == drop else k for k in keys]
        entries.append(write_shard_features(shard_dir, name, keys, values))
        units += len(keys)
    recipe: dict = {}
    record = {
        "dir": DIRECTORY, "dim": int(dim), "dtype": "float16", "units": units,
        "backbone": features.backbone, "recipe": recipe,
        "digest": recipe_digest(features.backbone, recipe), "shards": entries,
    }  # fmt: skip
    manifest[RECORD_KEY] = record
    write_manifest(shard_dir, manifest)
    return record
