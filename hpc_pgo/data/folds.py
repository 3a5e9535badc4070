"""One fold of a shard set: its train, validation and test patients, from the manifest.

``open_fold`` reads manifest.json (refusing one edited since it was written), selects fold k of
its splits and checks them (known patients, disjoint sides, a holdout within train). ``FoldData``
answers the questions every later stage asks: the patients and unit counts of a split, the omics
groups, the image record, the embedding fields. ``split_keys`` lists a split's sample keys from a
shard index, checked against the manifest's unit counts.

Splits a loader serves: "train" and "test" are the manifest's; "val" is the fold's train patients
held out for validation (open_fold's holdout), read like "test".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpc_pgo.data.inner import InnerFold, inner_parts
from hpc_pgo.data.shards import MANIFEST, SCHEMA_VERSION, read_manifest
from hpc_pgo.errors import PgoError

if TYPE_CHECKING:
    from hpc_pgo.data.tarindex import ShardIndex

SPLITS = ("train", "test")  # the manifest's splits of a fold


# what a loader serves: "val" is the fold's train patients held out for validation (open_fold's
# holdout), read like the test split (every unit once, in shard order, the test view)
LOADER_SPLITS = ("train", "test", "val")


_MANIFEST_KEYS = ("cohort", "groups", "image", "patients", "shards", "splits")


def require_keys(manifest: Mapping, shard_dir: Path) -> dict:
    """The manifest, after checking that it has the keys the loader reads."""
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        raise PgoError(
            f"{shard_dir / MANIFEST}: missing key(s) {', '.join(missing)}; schema_version "
            f"{SCHEMA_VERSION} has {', '.join(_MANIFEST_KEYS)}"
        )
    return dict(manifest)


@dataclass(frozen=True)
class FoldData:
    """One fold of a shard set: its train, validation and test patients (sorted ids) and the
    manifest. val is empty unless open_fold was given a holdout; train then excludes it."""

    shard_dir: Path
    fold: int
    manifest: dict = field(repr=False)
    train: tuple[str, ...]
    test: tuple[str, ...]
    val: tuple[str, ...] = ()

    @property
    def groups(self) -> dict[str, list[str]]:
        """Omics groups in the shards: group -> feature names, in vector order."""
        return self.manifest["groups"]

    @property
    def image(self) -> dict | None:
        """The manifest's image record ({"format", "kind", "size": [h, w]}) or None (omics only)."""
        return self.manifest["image"]

    @property
    def embeddings(self) -> dict[str, int]:
        """Per-patient embedding fields recorded by `pgo-shards embed-rna`: field -> width ({} if none)."""
        record = self.manifest.get("embeddings") or {}
        return {name: int(spec["dim"]) for name, spec in record.get("fields", {}).items()}

    def patients(self, split: str) -> tuple[str, ...]:
        """Patients of "train", "val" or "test"."""
        return {"train": self.train, "val": self.val, "test": self.test}[check_split(split)]

    def units(self, split: str) -> int:
        """Number of image units (samples) of the split's patients, from the manifest."""
        return sum(self.manifest["patients"][p]["units"] for p in self.patients(split))


def open_fold(shard_dir: Path | str, fold: int, holdout: Iterable[str] = ()) -> FoldData:
    """Read manifest.json and select fold `fold` (0-based) of its splits. A manifest edited
    since it was written (its manifest_sha256 differs) or without a digest is refused.

    fold: an int, or an InnerFold (hpc_pgo.data.inner): then `test` is its part of the outer
    fold's train patients (hpc_pgo.data.inner.inner_parts) and `train` the other parts; the
    outer fold's test patients are in neither.

    holdout: train patients of the fold held out for validation: they become `val` and leave
    `train` (a patient that is not a train patient of the fold is refused). Empty: val is ().
    """
    shard_dir = Path(shard_dir)
    manifest = require_keys(read_manifest(shard_dir), shard_dir)
    folds = manifest["splits"].get("folds", []) if isinstance(manifest["splits"], dict) else []
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(folds):
        valid = f"0..{len(folds) - 1}" if folds else "none"
        raise PgoError(
            f"fold {fold!r} is out of range for {shard_dir / MANIFEST}: valid folds "
            f"are {valid} ({len(folds)} folds in its splits)"
        )
    train, test = (tuple(sorted(folds[fold][split])) for split in SPLITS)
    known = manifest["patients"]
    for split, patients in (("train", train), ("test", test)):
        unknown = [p for p in patients if p not in known]
        if unknown:
            raise PgoError(
                f"{shard_dir / MANIFEST}: fold {fold} {split} patient {unknown[0]!r} is "
                f"not in the manifest's patients ({len(unknown)} such)"
            )
    both = set(train) & set(test)
    if both:
        raise PgoError(
            f"{shard_dir / MANIFEST}: fold {fold} has patient {sorted(both)[0]!r} in "
            f"both train and test ({len(both)} such); the splits must be disjoint"
        )
    if isinstance(fold, InnerFold):  # an inner training: part `fold.part` of the train patients
        events = {p: known[p]["event"] for p in train if known[p].get("event") is not None}
        parts = inner_parts(train, events, fold.parts, seed=fold.seed, fold=int(fold))
        train, test = tuple(sorted(set(train) - set(parts[fold.part]))), parts[fold.part]
    held = set(holdout)
    stray = sorted(held - set(train))
    if stray:
        raise PgoError(
            f"{shard_dir / MANIFEST}: validation patient {stray[0]!r} is not a train patient of "
            f"fold {fold} ({len(stray)} such); valid: a subset of the fold's train patients"
        )
    if held:
        train = tuple(p for p in train if p not in held)
    return FoldData(
        shard_dir=shard_dir, fold=fold, manifest=manifest, train=train, test=test,
        val=tuple(sorted(held)),
    )  # fmt: skip


def check_split(split: str) -> str:
    if split not in LOADER_SPLITS:
        raise PgoError(f"split {split!r} is not one of {', '.join(LOADER_SPLITS)}")
    return split


def split_keys(data: FoldData, index: ShardIndex, split: str) -> list[str]:
    """Keys of the split's patients in shard order, checked against the manifest's unit counts."""
    wanted = set(data.patients(split))
    keys = [
        key
        for _, shard_keys in index.shards
        for key in shard_keys
        if index.patient_of[key] in wanted
    ]
    if len(keys) != data.units(split):
        counts: dict[str, int] = {}
        for key in keys:
            counts[index.patient_of[key]] = counts.get(index.patient_of[key], 0) + 1
        bad = next(
            p for p in sorted(wanted) if counts.get(p, 0) != data.manifest["patients"][p]["units"]
        )
        raise PgoError(
            f"{data.shard_dir}: patient {bad!r} has {counts.get(bad, 0)} unit(s) in the "
            f"shards, the manifest says {data.manifest['patients'][bad]['units']}"
        )
    return keys
