"""The tile-feature side-car: one frozen backbone's feature vector per image unit, beside the shards.

Written by `pgo-shards embed-tiles` (hpc_pgo.data.embed_tiles), read by the bag loader
(hpc_pgo.data.bags) and checked by `pgo-shards verify`. Layout, in the shard directory::

    tile_features/<set>/<shard stem>.npy        float16 (n, D): row i is the feature of the
                                                shard's i-th sample (the tar's order);
                                                np.load(mmap_mode="r")
    tile_features/<set>/<shard stem>.keys.npy   <U (n,): the sample keys "<patient>__<unit>",
                                                same order

one pair per shard of the manifest, each file written atomically (hpc_pgo.atomic); <set> is the
first 16 hex digits of the record's digest (set_folder), so a recompute with another backbone or
recipe writes beside the recorded set, never over it, and embed-tiles removes the old folder only
after the manifest names the new one. The manifest
records the set (manifest rewritten atomically; the tars are not touched)::

    manifest["tile_features"] = {
      "dir": "tile_features", "dim": D, "dtype": "float16", "units": N,
      "backbone": {"arch", "digest" (backbone_digest: sha256 of the architecture name and every
                   tensor of its state dict), "weights" (file name or null), "weights_sha256",
                   "input_size", "mean", "std", "num_features"},
      "recipe": {what else decides the values: "view", "precision", ...; sealed by "digest"},
      "digest": sha256 of the backbone digest and the recipe: what a resumed run must match,
      "shards": [{"shard": "shard-000000.tar", "units": n,
                  "features": {"file", "sha256", "bytes"}, "keys": {"file", "sha256", "bytes"}}, ...]}

A patient's units are contiguous in a shard (the builder writes them in runs, manifest
``patients`` per shard), so the reader keeps, per patient, the (shard, start, stop) row runs of
its units rather than a dict of every key: memory O(patients + shards), features memory-mapped.

Every problem raises PgoError naming the file and what to run: a file missing or of other bytes
than recorded (sha256 checked with verify=True), keys that are not the shard's samples in the
manifest's count, a shape or dtype other than recorded, non-finite values (checked with verify).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc_pgo import atomic
from hpc_pgo.data.members import MANIFEST, patient_of_key, sha256_file
from hpc_pgo.errors import PgoError

RECORD_KEY = "tile_features"  # the manifest key
DIRECTORY = "tile_features"  # the side-car's folder in the shard directory
DTYPE = np.float16
REMEDY = "re-run `pgo-shards embed-tiles`"

__all__ = [
    "DIRECTORY",
    "RECORD_KEY",
    "TileFeatures",
    "backbone_digest",
    "check_tile_features",
    "file_names",
    "read_tile_features",
    "recipe_digest",
    "write_shard_features",
]


def backbone_digest(arch: str, state_dict: Mapping[str, object]) -> str:
    """sha256 of `arch` and every tensor of `state_dict` (name, dtype, shape, bytes; names sorted):
    the same weights give the same digest whatever file they came from."""
    import torch

    h = hashlib.sha256(arch.encode())
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape: a 0-d tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def recipe_digest(backbone: Mapping, recipe: Mapping) -> str:
    """sha256 of the backbone digest and the recipe (sorted JSON): a feature set's identity."""
    import json

    text = json.dumps({"backbone": backbone["digest"], "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def file_names(shard_name: str, subdir: str | None = None) -> tuple[str, str]:
    """(features, keys) file paths, relative to the shard directory, of shard `shard_name`, in
    tile_features/ or its folder `subdir` (embed-tiles: one per feature set, set_folder)."""
    stem = shard_name[: -len(".tar")] if shard_name.endswith(".tar") else shard_name
    folder = f"{DIRECTORY}/{subdir}" if subdir else DIRECTORY
    return f"{folder}/{stem}.npy", f"{folder}/{stem}.keys.npy"


def set_folder(digest: str) -> str:
    """The folder (under tile_features/) of the feature set of `digest`: a recompute with another
    backbone or recipe writes beside the recorded set, which stays whole until the manifest
    names the new one."""
    return digest[:16]


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_shard_features(
    shard_dir: Path | str,
    shard_name: str,
    keys: Sequence[str],
    features: np.ndarray,
    subdir: str | None = None,
) -> dict:
    """Write one shard's pair (keys (n,), features (n, D) stored as float16), each atomically,
    into tile_features/[subdir/]; returns its manifest entry. Non-finite features are refused
    (naming the first key)."""
    shard_dir = Path(shard_dir)
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != len(keys):
        raise ValueError(f"features {features.shape} for {len(keys)} keys")
    stored = features.astype(DTYPE)
    bad = ~np.isfinite(stored).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise PgoError(
            f"{shard_name}: the feature of {keys[first]!r} is not finite in float16 "
            f"({int(bad.sum())} such units); the backbone's weights or inputs are broken"
        )
    entry: dict = {"shard": shard_name, "units": len(keys)}
    feature_file, key_file = file_names(shard_name, subdir)
    for name, rel, array in (
        ("keys", key_file, np.asarray(list(keys), dtype=str)),
        ("features", feature_file, stored),
    ):
        data = _npy_bytes(array)
        atomic.write_bytes(shard_dir / rel, data)
        entry[name] = {
            "file": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
        }  # fmt: skip
    return entry


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TileFeatures:
    """The side-car, memory-mapped: ``bag(patient)`` float32 (n_units, dim) in key order,
    ``keys(patient)`` the unit keys of those rows; patients: every patient with units."""

    dim: int
    record: dict
    _features: tuple[np.ndarray, ...]
    _keys: tuple[np.ndarray, ...]
    _runs: dict  # patient -> tuple of (shard index, start, stop)

    @property
    def patients(self) -> list[str]:
        return sorted(self._runs)

    def units(self, patient: str) -> int:
        """Number of units (rows) of `patient`; 0 for a patient without units."""
        return sum(stop - start for _, start, stop in self._runs.get(patient, ()))

    def keys(self, patient: str) -> list[str]:
        """The unit keys of `patient`, in the order of bag()'s rows."""
        return [str(k) for s, a, b in self._runs.get(patient, ()) for k in self._keys[s][a:b]]

    def bag(self, patient: str, rows: Iterable[int] | None = None) -> np.ndarray:
        """float32 (n, dim): the features of `patient`'s units (all, or the given row numbers of
        its bag, in the order given)."""
        parts = [self._features[s][a:b] for s, a, b in self._runs.get(patient, ())]
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if rows is None:
            return np.concatenate(parts).astype(np.float32)
        rows = np.asarray(list(rows), dtype=np.int64)
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return np.asarray(whole[rows], dtype=np.float32)


def _check_file(shard_dir: Path, ref: Mapping, *, verify: bool) -> Path:
    path = shard_dir / str(ref.get("file", ""))
    if not str(ref.get("file", "")).startswith(DIRECTORY + "/") or ".." in Path(ref["file"]).parts:
        raise PgoError(
            f"{shard_dir / MANIFEST}: tile_features file {ref.get('file')!r} is not in {DIRECTORY}/"
        )
    if not path.is_file():
        raise PgoError(f"{path}: missing, but {MANIFEST} records it; {REMEDY}")
    if path.stat().st_size != ref.get("bytes") or (
        verify and sha256_file(path) != ref.get("sha256")
    ):
        raise PgoError(
            f"{path}: differs from the sha256 in {MANIFEST} (replaced or damaged); {REMEDY}"
        )
    return path


class _OpenedSets:
    """The side-cars this process opened: (shard dir, record, the recorded files' (size,
    mtime_ns, inode)) -> (TileFeatures, verified). A fold makes a loader per epoch and per test
    pass; each reads the side-car through here, so its sha256 and finite-value checks (a full
    read: GBs at lab scale) run once per process and file version, not once per epoch. A file
    replaced or edited since has another stat and is read and checked again. Keeps `keep`."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self.entries: dict[tuple, tuple[TileFeatures, bool]] = {}

    def get(self, key: tuple, verify: bool) -> TileFeatures | None:
        hit = self.entries.get(key)
        return hit[0] if hit is not None and (hit[1] or not verify) else None

    def put(self, key: tuple, features: TileFeatures, verified: bool) -> None:
        self.entries.pop(key, None)
        self.entries[key] = (features, verified)
        while len(self.entries) > self.keep:
            del self.entries[next(iter(self.entries))]


_OPENED = _OpenedSets()


def _file_stats(shard_dir: Path, record: Mapping) -> tuple | None:
    """(file, size, mtime_ns, inode) of every file the record names; None when one is absent
    (then nothing is cached: the full read names the problem)."""
    stats = []
    for entry in record.get("shards", []):
        for ref in (entry.get("features", {}), entry.get("keys", {})):
            try:
                st = (shard_dir / str(ref.get("file", ""))).stat()
            except OSError:
                return None
            stats.append((ref.get("file"), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stats)


def read_tile_features(
    shard_dir: Path | str, manifest: Mapping, *, verify: bool = True
) -> TileFeatures:
    """The side-car recorded in `manifest`, checked (module docstring); features memory-mapped.
    verify: sha256 and finite values, once per process and file version (_OpenedSets)."""
    import json

    shard_dir = Path(shard_dir)
    record = manifest.get(RECORD_KEY)
    if not record:
        raise PgoError(
            f"{shard_dir / MANIFEST}: no tile features recorded; run `pgo-shards embed-tiles "
            f"{shard_dir} --arch ...` first"
        )
    stats = _file_stats(shard_dir, record)
    key = None
    if stats is not None:
        identity = json.dumps([record, manifest["shards"], sorted(manifest["patients"])],
                              sort_keys=True)  # fmt: skip
        key = (str(shard_dir.resolve()), identity, stats)
        cached = _OPENED.get(key, verify)
        if cached is not None:
            return cached
    features = _open_tile_features(shard_dir, manifest, record, verify=verify)
    if key is not None:
        _OPENED.put(key, features, verify)
    return features


def _open_tile_features(
    shard_dir: Path, manifest: Mapping, record: Mapping, *, verify: bool
) -> TileFeatures:
    """read_tile_features without the cache: every file checked and memory-mapped."""
    dim = int(record["dim"])
    by_shard = {e.get("shard"): e for e in record.get("shards", [])}
    patients = manifest["patients"]
    features, keys, runs = [], [], {}
    for index, shard in enumerate(manifest["shards"]):
        entry = by_shard.get(shard["name"])
        if entry is None:
            raise PgoError(
                f"{shard_dir / MANIFEST}: tile_features has no entry for shard {shard['name']}; {REMEDY}"
            )
        key_path = _check_file(shard_dir, entry["keys"], verify=verify)
        feat_path = _check_file(shard_dir, entry["features"], verify=verify)
        try:
            shard_keys = np.load(key_path, allow_pickle=False)
            shard_feats = np.load(feat_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise PgoError(f"{feat_path}: not a readable .npy pair ({err}); {REMEDY}") from err
        n = int(shard["samples"])
        if shard_keys.shape != (n,) or shard_feats.shape != (n, dim) or shard_feats.dtype != DTYPE:
            raise PgoError(
                f"{feat_path}: {shard_feats.dtype} {shard_feats.shape} with {shard_keys.shape[0]} "
                f"keys; {MANIFEST} says {n} samples of shard {shard['name']}, dim {dim}, float16; {REMEDY}"
            )
        if verify and not np.isfinite(shard_feats).all():
            raise PgoError(f"{feat_path}: holds non-finite values; {REMEDY}")
        start, current = 0, None
        for row, key in enumerate(list(shard_keys) + [None]):
            patient = None if key is None else patient_of_key(str(key), patients)
            if key is not None and patient is None:
                raise PgoError(
                    f"{key_path}: key {str(key)!r} is no patient of {MANIFEST}; {REMEDY}"
                )
            if patient != current:
                if current is not None:
                    runs.setdefault(current, []).append((index, start, row))
                current, start = patient, row
        features.append(shard_feats)
        keys.append(shard_keys)
    return TileFeatures(
        dim=dim,
        record=dict(record),
        _features=tuple(features),
        _keys=tuple(keys),
        _runs={p: tuple(r) for p, r in runs.items()},
    )


def check_tile_features(
    shard_dir: Path | str,
    manifest: Mapping,
    sample_keys: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Every problem of the side-car recorded in `manifest`, one line each (verify's checks):
    its digest against its backbone and recipe, and per shard of the manifest the pair present
    with the recorded bytes and sha256, shapes (samples, dim) and dtype as recorded, values
    finite, and the keys equal to `sample_keys[shard]` (the tar's keys in order) when given.
    [] when nothing is recorded."""
    shard_dir = Path(shard_dir)
    record = manifest.get(RECORD_KEY)
    if not record:
        return []
    where = f"{MANIFEST} {RECORD_KEY}"
    try:
        dim = int(record["dim"])
        entries = {e["shard"]: e for e in record["shards"]}
        digest_ok = record["digest"] == recipe_digest(record["backbone"], record["recipe"])
    except (KeyError, TypeError, ValueError) as err:
        return [f"{where}: not a tile-feature record ({type(err).__name__}: {err}); {REMEDY}"]
    problems = [] if digest_ok else [
        f"{where}: digest differs from its backbone and recipe (edited); {REMEDY}"
    ]  # fmt: skip
    for shard in manifest["shards"]:
        entry = entries.get(shard["name"])
        if entry is None:
            problems.append(f"{where}: no entry for shard {shard['name']}; {REMEDY}")
            continue
        try:
            key_path = _check_file(shard_dir, entry["keys"], verify=True)
            feat_path = _check_file(shard_dir, entry["features"], verify=True)
            keys = np.load(key_path, allow_pickle=False)
            feats = np.load(feat_path, mmap_mode="r", allow_pickle=False)
        except PgoError as err:
            problems.append(str(err))
            continue
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(
                f"{shard_dir / DIRECTORY}: shard {shard['name']}: unreadable ({err}); {REMEDY}"
            )
            continue
        n = int(shard["samples"])
        if feats.shape != (n, dim) or feats.dtype != DTYPE:
            problems.append(
                f"{feat_path}: {feats.dtype} {feats.shape}; {MANIFEST} says ({n}, {dim}) float16 "
                f"for shard {shard['name']}; {REMEDY}"
            )
        elif not np.isfinite(feats).all():
            problems.append(f"{feat_path}: holds non-finite values; {REMEDY}")
        if sample_keys is not None and shard["name"] in sample_keys:
            expected = list(sample_keys[shard["name"]])
            have = [str(k) for k in keys]
            if have != expected:
                first = next(
                    (i for i, (a, b) in enumerate(zip(have, expected, strict=False)) if a != b),
                    min(len(have), len(expected)),
                )
                problems.append(
                    f"{key_path}: keys differ from shard {shard['name']}'s samples (first at row "
                    f"{first}: {len(have)} keys, {len(expected)} samples); {REMEDY}"
                )
    return problems
