"""The fold loader: batches of image units for (fold k, train | test) read from WebDataset shards.

A shard set (format: shards/README.md, written by `pgo-shards build`) holds one sample per image
unit keyed `<patient>__<unit>`. For one fold, one split and one rank of W, `make_loader` returns a
torch DataLoader (wrapped in FoldLoader) over a webdataset DataPipeline of small named stages::

    batch numbers of this rank        the plan (plan_rank): which keys, in which order, in
                                      which batch; computed from the manifest and the index
                                      of the shards this rank reads
    -> wds.split_by_worker            worker w of n takes batches b = w (mod n)
    -> read_batches                   the wanted tar members of those keys, read by offset
    -> decode_batches                 PIL decode, train/test view, .npy, surv.json (decode_unit)
    -> collate_batches                omics z-scores, stacking (collate)
    FoldLoader, in the consuming process: ImageNet normalisation of the uint8 images, tensors

A batch is a dict::

    "key": list[str] (B)       "<patient>__<unit>"
    "patient": list[str] (B)
    "image": float32 (B, 3, S, S), S = image_size, (v / 255 - mean_c) / std_c with ImageNet mean/std
    "<group>": float32 (B, F_group), z-scores with the fold's train statistics (see Standardizer)
    "time": float32 (B,) follow-up time, in the cohort's unit (months in the demo)
    "event": float32 (B,) 1 = death observed, 0 = censored
    "mask": {modality: float32 (B,)} 1 = available; only for shard sets built with --missing mask
    "<embedding>": float32 (B, d) per-patient embedding from the side-car `pgo-shards embed-rna`
                   wrote (rna_emb, rna_mlpa; see hpc_pgo.data.embed_rna), only those asked for with
                   make_loader(embeddings=...); served as stored, NOT standardised (the scGPT
                   embedding is L2-normalised and MLP-A was pretrained on exactly that)

The shard index (index_shards) lists every sample's tar members with their offsets, from the tar
headers alone; the plan (plan_rank) is computed on keys, before any payload is read. A manifest
written by `pgo-shards build` lists each shard's patients with their units (shards/README.md), so
a rank's share is known from the manifest alone and the rank indexes only the shards holding it
(shard assignment, when world_size W > 1 and at least W shards hold units of the split); a set
built before that field, W = 1 or fewer shards than ranks index every shard instead:

- train (epoch e, seed s): shards are taken in an order permuted by (s, e); N train units, n =
  (N // W) // B full batches on every rank (no rank waits for another at the epoch's end; each
  epoch leaves out a different N - W*n*B units). With shard assignment rank r owns the
  contiguous range [r*L, (r+1)*L), L = N // W, of the train units in that shard order (a range
  may begin or end inside a shard) and keeps a choice of n*B of them seeded by (s, e, r)
  (rank_share, plan_train_share); otherwise a seeded choice of W*n*B of all N units is dealt
  round-robin to the ranks (plan_train). Each rank's units are then shuffled by
  `webdataset.shuffle` with a buffer of `shuffle_buffer` units seeded by (s, e, rank), so reads
  stay within a window of the tar stream (near-sequential on cluster file systems).
- test (and val): every unit exactly once over the ranks, every rank the same number of batches,
  ceil(ceil(N/W)/B), its units split into near-equal consecutive batches (size <= B; a batch is
  empty only when a rank has fewer units than batches). With shard assignment rank r owns units
  [r*N // W, (r+1)*N // W) in shard order (plan_test_share); otherwise unit i in shard order
  when i = r (mod W) (plan_test).

Because batches are fixed by the plan and the DataLoader takes batch b from worker b mod n in
turn, the stream (keys, order, batch boundaries, augmentations) depends on (seed, epoch, rank,
world_size, batch_size, shuffle_buffer) only, NOT on num_workers: a resumed fold sees the same
stream with any number of workers. Augmentations are drawn per unit from (seed, epoch, key).

Reading by offset rather than streaming whole tars: every reader (rank x worker) reads and
parses only its own members. Streaming each tar through webdataset's tar iterator in every
worker, skipping the others' units, parsed every header in every worker (about 0.5 ms per unit
each on the demo cohort, one shard of 600 units), which ate what a 2nd worker gained. What each
process still reads whole: the tar headers for the index (512 bytes per member) and, with verify,
each shard once for its sha256; both are cached per process by (file, size, mtime). Under shard
assignment a rank reads the headers of its own shards only (its share of the cohort plus at most
two shards it shares with its neighbours) and holds the index and plan of its own units only.
On either path no shard that verified.json vouches for is hashed: a shard set verified once (by
the build, or by `pgo-shards verify`, which records it) is not hashed again by every rank of
every fold. A shard
the record does not vouch for (no record, or its size or mtime changed since) is hashed by the
rank that reads it before it yields any of its samples, after one warning naming the set and
`pgo-shards verify`. The record keys on size and mtime: a rewrite that keeps both is not seen
by the loader (verify hashes everything again). hpc_pgo.data.startup measures a rank's start-up.

Bad input raises PgoError naming the shard (and key): a manifest edited since it was written (its
digest, shards.read_manifest) when the fold is opened; a shard whose size, sample count,
patients or sha256 differ from the manifest (truncated, tampered) or whose tar headers do not
parse, when the loader is made (for the shards this rank reads); a member that ends early, an
image that does not decode, a sample without a field the caller asked for, while reading.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import random
import tarfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from webdataset.tariterators import base_plus_ext

from hpc_pgo.atomic import write_bytes
from hpc_pgo.data.embed_rna import EmbeddingTable, read_embeddings
from hpc_pgo.data.shards import (
    MANIFEST,
    SCHEMA_VERSION,
    patient_of_key,
    patient_runs,
    read_manifest,
    read_verified,
    runs_problem,
    trusted,
)
from hpc_pgo.data.transforms import VIEWS, decode_image, normalize
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")  # the manifest's splits of a fold
# what a loader serves: "val" is the fold's train patients held out for validation (open_fold's
# holdout), read like the test split (every unit once, in shard order, the test view)
LOADER_SPLITS = ("train", "test", "val")
IMAGE_FORMATS = ("png", "jpg")
_MANIFEST_KEYS = ("cohort", "groups", "image", "patients", "shards", "splits")
_MIN_STD = 1e-8  # a feature this flat over the train patients is constant: divide by 1


# --------------------------------------------------------------------------- manifest and fold


def _require_keys(manifest: Mapping, shard_dir: Path) -> dict:
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
        return {"train": self.train, "val": self.val, "test": self.test}[_check_split(split)]

    def units(self, split: str) -> int:
        """Number of image units (samples) of the split's patients, from the manifest."""
        return sum(self.manifest["patients"][p]["units"] for p in self.patients(split))


def open_fold(shard_dir: Path | str, fold: int, holdout: Iterable[str] = ()) -> FoldData:
    """Read manifest.json and select fold `fold` (0-based) of its splits. A manifest edited
    since it was written (its manifest_sha256 differs) or without a digest is refused.

    holdout: train patients of the fold held out for validation: they become `val` and leave
    `train` (a patient that is not a train patient of the fold is refused). Empty: val is ().
    """
    shard_dir = Path(shard_dir)
    manifest = _require_keys(read_manifest(shard_dir), shard_dir)
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


def _check_split(split: str) -> str:
    if split not in LOADER_SPLITS:
        raise PgoError(f"split {split!r} is not one of {', '.join(LOADER_SPLITS)}")
    return split


# --------------------------------------------------------------------------- shard index

# A tar member of a sample: (suffix, offset of its data in the tar, size in bytes)
Member = tuple[str, int, int]


@dataclass(frozen=True)
class ShardIndex:
    """Where every sample lies, read from the tar headers (no payload is read).

    shards: ((shard name, (key, ...)), ...) in the manifest's order, keys in tar order.
    shard_of: key -> shard name; patient_of: key -> patient;
    members: key -> ((suffix, data offset, size), ...) of its tar members.
    """

    shards: tuple[tuple[str, tuple[str, ...]], ...]
    shard_of: dict[str, str] = field(repr=False)
    patient_of: dict[str, str] = field(repr=False)
    members: dict[str, tuple[Member, ...]] = field(repr=False)


class TarIndexCache:
    """Tar headers of recently indexed shards: path -> ((size, mtime_ns), samples, last call).

    Entries live while their shard was indexed by one of the last `keep` index_shards calls of
    this process (a train epoch, its val and test passes, the next epoch's train pass), so a
    rank holds the index of the shards it reads now, not of every shard it was ever dealt (the
    train shards of a rank change every epoch). reads counts tar files parsed (cache misses).
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self.entries: dict[str, tuple[tuple[int, int], tuple, int]] = {}
        self.calls = 0
        self.reads = 0

    def begin(self) -> None:
        """A new index_shards call: forget the shards no call among the last `keep` indexed."""
        self.calls += 1
        stale = [p for p, (_, _, last) in self.entries.items() if last <= self.calls - self.keep]
        for path in stale:
            del self.entries[path]

    def samples(self, path: str, size: int, mtime_ns: int) -> tuple:
        """_tar_samples of the file as it is now (size, mtime_ns), from the cache when it holds it."""
        hit = self.entries.get(path)
        if hit is not None and hit[0] == (size, mtime_ns):
            samples = hit[1]
        else:
            samples = _tar_samples(path)
            self.reads += 1
        self.entries[path] = ((size, mtime_ns), samples, self.calls)
        return samples

    def clear(self) -> None:
        self.entries.clear()


TAR_INDEX = TarIndexCache()
_WARNED: set[tuple[str, str]] = set()  # (shard set, reason) already logged by this process


def index_shards(
    shard_dir: Path | str,
    manifest: Mapping,
    *,
    verify: bool = True,
    names: Collection[str] | None = None,
) -> ShardIndex:
    """List the samples of the manifest's shards (those in `names`, default all), checking each
    file against its manifest entry before any of its samples can be read.

    Checked, in this order, each naming the shard: the size equals `bytes` (else truncated or
    replaced), the tar headers read, the sample count equals `samples`, the samples' patients
    are the entry's `patients` runs (when the manifest has them), and with verify the sha256 of
    the whole file equals `sha256` (else tampered). With verify, a shard that verified.json
    vouches for (shards.trusted: the same manifest entry, size and mtime as when it was
    verified) is not hashed; the others are, after ONE warning per shard set and reason in this
    process saying what to run. Headers (TarIndexCache) and digests are cached per (file, size,
    mtime) within a process, so the next epoch's loader does not read them again.
    """
    shard_dir = Path(shard_dir)
    entries = [e for e in manifest["shards"] if names is None or e["name"] in names]
    record, why = read_verified(shard_dir) if verify else ({}, None)
    stats = [_shard_stat(shard_dir / entry["name"], entry) for entry in entries]
    hashed = {
        entry["name"]
        for entry, stat in zip(entries, stats, strict=True)
        if verify and not trusted(record, entry, stat)
    }
    if hashed:
        first = next(e for e in entries if e["name"] in hashed)
        reason = why or f"{first['name']} ({len(hashed)} such) changed since it was verified"
        if (str(shard_dir), reason) not in _WARNED:
            _WARNED.add((str(shard_dir), reason))
            log.warning(
                "shard set %s is not recorded as verified: %s; hashing the %d shard(s) this "
                "process reads before reading them (run `pgo-shards verify %s` once to check "
                "them all and record it)",
                shard_dir, reason, len(hashed), shard_dir,
            )  # fmt: skip
    TAR_INDEX.begin()
    shards, shard_of, patient_of, members = [], {}, {}, {}
    for entry, stat in zip(entries, stats, strict=True):
        path = shard_dir / entry["name"]
        samples = TAR_INDEX.samples(str(path), stat.st_size, stat.st_mtime_ns)
        if len(samples) != entry["samples"]:
            raise PgoError(
                f"shard {path}: {len(samples)} samples, the manifest says "
                f"{entry['samples']}; rebuild it or run `pgo-shards verify`"
            )
        if entry["name"] in hashed:
            digest = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
            if digest != entry["sha256"]:
                raise PgoError(
                    f"shard {path}: sha256 {digest[:16]}... differs from the "
                    f"manifest's {entry['sha256'][:16]}... (tampered or replaced); "
                    f"rebuild it or run `pgo-shards verify`"
                )
        order = []
        for key, key_members in samples:
            if key in shard_of:
                raise PgoError(
                    f"shard {path}: key {key!r} occurs twice in the shard set (also "
                    f"in {shard_of[key]})"
                )
            patient = patient_of_key(key, manifest["patients"])
            if patient is None:
                raise PgoError(
                    f"shard {path}: key {key!r} names no patient of the manifest "
                    f"(keys are '<patient>__<unit>' or '<patient>')"
                )
            shard_of[key], patient_of[key], members[key] = entry["name"], patient, key_members
            order.append(patient)
        if "patients" in entry and (problem := runs_problem(patient_runs(order), entry)):
            raise PgoError(f"shard {path}: {problem}; rebuild it or run `pgo-shards verify`")
        shards.append((entry["name"], tuple(key for key, _ in samples)))
    return ShardIndex(
        shards=tuple(shards), shard_of=shard_of, patient_of=patient_of, members=members
    )


def _shard_stat(path: Path, entry: Mapping) -> os.stat_result:
    """The shard's stat, after checking that it is there with the manifest's size."""
    try:
        stat = path.stat()
    except OSError as exn:
        raise PgoError(
            f"shard {path}: listed in {MANIFEST} but cannot be read ({exn.strerror})"
        ) from exn
    if stat.st_size != entry["bytes"]:
        raise PgoError(
            f"shard {path}: {stat.st_size} bytes, the manifest says {entry['bytes']} "
            f"(truncated or replaced); rebuild it or run `pgo-shards verify`"
        )
    return stat


def _tar_samples(path: str) -> tuple[tuple[str, tuple[Member, ...]], ...]:
    """((key, members), ...) of one tar in member order, by webdataset's naming rule (key = name
    up to the first dot, suffix = the rest, lower-cased; consecutive members with one key form a
    sample). Only the headers are read."""
    samples: list[tuple[str, list[Member]]] = []
    try:
        with tarfile.open(path, mode="r:") as tar:  # random access: members' data are skipped
            for member in tar:
                key, suffix = base_plus_ext(member.name)
                if not member.isreg() or key is None:
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, []))
                samples[-1][1].append((suffix.lower(), member.offset_data, member.size))
    except (tarfile.TarError, OSError) as exn:
        raise PgoError(
            f"shard {path}: unreadable tar ({exn}); rebuild it or run `pgo-shards verify`"
        ) from exn
    return tuple((key, tuple(members)) for key, members in samples)


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hex sha256 of a file (size and mtime only key the cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one pass: shards in reading order and its batches of keys, in order."""

    shard_order: tuple[str, ...]
    batches: tuple[tuple[str, ...], ...]

    @property
    def keys(self) -> list[str]:
        """Every key of the plan, in the order the batches yield them."""
        return [key for batch in self.batches for key in batch]


def _stream_seed(*numbers: int) -> int:
    """A 64-bit seed from non-negative integers (numpy's SeedSequence hashing: no Python hash())."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0])


def plan_train(
    index: ShardIndex,
    keys: Sequence[str],
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    epoch: int,
    seed: int,
    shuffle_buffer: int,
) -> EpochPlan:
    """Rank `rank`'s train batches for one epoch: n = (N // W) // B full batches on every rank.

    Shard order: a permutation seeded by (seed, epoch). Of the N train units in that order, a
    uniform choice of W*n*B (same seed) is dealt round-robin to the ranks; the rank's units are
    shuffled with webdataset.shuffle(bufsize=initial=shuffle_buffer) seeded by (seed, epoch, rank).
    """
    order_rng = np.random.default_rng(_stream_seed(seed, epoch))
    names = [name for name, _ in index.shards]
    shard_order = [names[i] for i in order_rng.permutation(len(names))]
    wanted = set(keys)
    shard_keys = dict(index.shards)
    stream = [key for name in shard_order for key in shard_keys[name] if key in wanted]
    per_rank = (len(stream) // world_size) // batch_size * batch_size
    if per_rank == 0:
        raise PgoError(
            f"train split has {len(stream)} unit(s): too few for {world_size} rank(s) x "
            f"batch_size {batch_size} (needs >= {world_size * batch_size})"
        )
    kept = np.sort(order_rng.choice(len(stream), world_size * per_rank, replace=False))
    own = [stream[i] for i in kept[rank::world_size]]
    shuffle = wds.shuffle(
        bufsize=shuffle_buffer,
        initial=shuffle_buffer,
        rng=random.Random(_stream_seed(seed, epoch, rank)),
    )
    own = list(shuffle(iter(own)))
    batches = tuple(tuple(own[i : i + batch_size]) for i in range(0, per_rank, batch_size))
    return EpochPlan(shard_order=tuple(shard_order), batches=batches)


def plan_test(
    index: ShardIndex,
    keys: Sequence[str],
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    epoch: int,
    seed: int,
    shuffle_buffer: int,
) -> EpochPlan:
    """Rank `rank`'s test batches: units i = rank (mod W) in shard order; same batch count per rank.

    Every rank gets ceil(ceil(N / W) / B) batches, its units split into that many consecutive
    batches of near-equal size (<= B). epoch, seed and shuffle_buffer do not matter here.
    """
    if not keys:
        raise PgoError("test split has no units")
    own = list(keys[rank::world_size])
    count = math.ceil(math.ceil(len(keys) / world_size) / batch_size)
    bounds = [len(own) * i // count for i in range(count + 1)]
    batches = tuple(tuple(own[bounds[i] : bounds[i + 1]]) for i in range(count))
    return EpochPlan(shard_order=tuple(name for name, _ in index.shards), batches=batches)


PLANS: dict[str, Callable[..., EpochPlan]] = {
    "train": plan_train,
    "val": plan_test,
    "test": plan_test,
}


# --------------------------------------------------------------------------- shard assignment


def shard_layout(data: FoldData, split: str) -> tuple[tuple[str, int], ...] | None:
    """(shard name, units of the split's patients in it) of every shard in manifest order, from
    the manifest's per-shard `patients` field alone (no tar is read); None when an entry lacks
    the field (a set built before hpc_pgo wrote it). The units must add up to each patient's
    manifest count (else PgoError naming the patient)."""
    entries = data.manifest["shards"]
    if not entries or any("patients" not in entry for entry in entries):
        return None
    wanted = set(data.patients(split))
    layout, seen = [], dict.fromkeys(wanted, 0)
    for entry in entries:
        units = 0
        for patient, count in entry["patients"]:
            if patient in wanted:
                units += count
                seen[patient] += count
        layout.append((entry["name"], units))
    for patient in sorted(wanted):
        if seen[patient] != data.manifest["patients"][patient]["units"]:
            raise PgoError(
                f"{data.shard_dir / MANIFEST}: patient {patient!r} has {seen[patient]} unit(s) in "
                f"the shards' patients entries, its record says "
                f"{data.manifest['patients'][patient]['units']}; rebuild the shard set"
            )
    return tuple(layout)


def sharded(layout: Sequence[tuple[str, int]] | None, world_size: int) -> bool:
    """Whether each rank reads (and indexes) only its own shards: the manifest lists each shard's
    patients, world_size > 1 and at least world_size shards hold units of the split. Otherwise
    every rank indexes every shard (plan_train, plan_test), as sets built before the field are."""
    return layout is not None and world_size > 1 and sum(1 for _, n in layout if n) >= world_size


@dataclass(frozen=True)
class ShardSlice:
    """Part of a rank's share: units [start, stop) of the split's units of shard `name`, counted
    in tar order (samples are sorted by patient, so these are whole runs of patients' units)."""

    name: str
    start: int
    stop: int


def slices_of(stream: Sequence[tuple[str, int]], start: int, stop: int) -> tuple[ShardSlice, ...]:
    """The pieces of units [start, stop) of the concatenation of (shard name, units) in order."""
    pieces, offset = [], 0
    for name, units in stream:
        low, high = max(start, offset), min(stop, offset + units)
        if low < high:
            pieces.append(ShardSlice(name, low - offset, high - offset))
        offset += units
        if offset >= stop:
            break
    return tuple(pieces)


def rank_share(
    layout: Sequence[tuple[str, int]],
    split: str,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    epoch: int,
    seed: int,
) -> tuple[tuple[ShardSlice, ...], int]:
    """Rank `rank`'s slices of the split and n, the number of batches EVERY rank yields, from the
    layout (manifest counts) alone.

    train: the shards in an order permuted by (seed, epoch); of their N train units in that
    order, rank r takes the contiguous range [r*L, (r+1)*L), L = N // W, and n = L // B, the
    same n as when every rank indexes every shard. test / val: shards in manifest order, rank r
    takes [r*N // W, (r+1)*N // W) (every unit exactly once over the ranks) and n =
    ceil(ceil(N / W) / B). A range may start or end inside a shard: that shard is then read by
    two ranks, each its own units.
    """
    if split == "train":
        order = np.random.default_rng(_stream_seed(seed, epoch)).permutation(len(layout))
        stream = [layout[i] for i in order if layout[i][1]]
        total = sum(units for _, units in stream)
        share = total // world_size
        if share // batch_size == 0:
            raise PgoError(
                f"train split has {total} unit(s): too few for {world_size} rank(s) x "
                f"batch_size {batch_size} (needs >= {world_size * batch_size})"
            )
        return slices_of(stream, rank * share, (rank + 1) * share), share // batch_size
    stream = [item for item in layout if item[1]]
    total = sum(units for _, units in stream)
    if total == 0:
        raise PgoError(f"{split} split has no units")
    batches = math.ceil(math.ceil(total / world_size) / batch_size)
    bounds = (total * rank // world_size, total * (rank + 1) // world_size)
    return slices_of(stream, *bounds), batches


def slice_keys(
    index: ShardIndex, slices: Sequence[ShardSlice], patients: Collection[str]
) -> list[str]:
    """The keys of the slices: in each shard, the split's units (of `patients`) in tar order,
    [start, stop) of them. index_shards checked each shard's patients against the manifest's."""
    shard_keys = dict(index.shards)
    keys = []
    for piece in slices:
        units = [key for key in shard_keys[piece.name] if index.patient_of[key] in patients]
        keys += units[piece.start : piece.stop]
    return keys


def plan_train_share(
    keys: Sequence[str],
    shard_order: Sequence[str],
    *,
    rank: int,
    batches: int,
    batch_size: int,
    epoch: int,
    seed: int,
    shuffle_buffer: int,
) -> EpochPlan:
    """A rank's train batches from its own units (slice_keys of rank_share): a uniform choice of
    batches * B of them seeded by (seed, epoch, rank), kept in stream order, then shuffled with
    webdataset.shuffle(bufsize=initial=shuffle_buffer) seeded by (seed, epoch, rank)."""
    chooser = np.random.default_rng(_stream_seed(seed, epoch, rank, 1))
    kept = np.sort(chooser.choice(len(keys), batches * batch_size, replace=False))
    shuffle = wds.shuffle(
        bufsize=shuffle_buffer,
        initial=shuffle_buffer,
        rng=random.Random(_stream_seed(seed, epoch, rank)),
    )
    own = list(shuffle(keys[i] for i in kept))
    return EpochPlan(
        shard_order=tuple(shard_order),
        batches=tuple(tuple(own[i : i + batch_size]) for i in range(0, len(own), batch_size)),
    )


def plan_test_share(keys: Sequence[str], shard_order: Sequence[str], *, batches: int) -> EpochPlan:
    """A rank's test (val) batches from its own units: `batches` consecutive batches of
    near-equal size, in shard order (empty ones only when it has fewer units than batches)."""
    bounds = [len(keys) * i // batches for i in range(batches + 1)]
    return EpochPlan(
        shard_order=tuple(shard_order),
        batches=tuple(tuple(keys[bounds[i] : bounds[i + 1]]) for i in range(batches)),
    )


def plan_rank(
    data: FoldData,
    split: str,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    epoch: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 256,
    verify: bool = True,
) -> tuple[EpochPlan, ShardIndex]:
    """What rank `rank` reads in one pass over (fold, split), and the index of those keys.

    When sharded(...): the rank's share comes from the manifest (rank_share), only the shards
    holding it are indexed (and, unless verified.json vouches for them, hashed), and its plan
    holds its own units only (plan_train_share, plan_test_share). Otherwise every shard is
    indexed and plan_train / plan_test give the plan (W = 1 always takes this path).
    The plan depends on (seed, epoch, rank, world_size, batch_size, shuffle_buffer) only.
    """
    layout = shard_layout(data, split)
    options = dict(rank=rank, world_size=world_size, batch_size=batch_size, epoch=epoch, seed=seed)
    if not sharded(layout, world_size):
        index = index_shards(data.shard_dir, data.manifest, verify=verify)
        keys = split_keys(data, index, split)
        plan = PLANS[split](index, keys, **options, shuffle_buffer=shuffle_buffer)
        return plan, _restrict(index, plan)
    slices, batches = rank_share(layout, split, **options)
    shard_order = tuple(dict.fromkeys(piece.name for piece in slices))
    index = index_shards(data.shard_dir, data.manifest, verify=verify, names=set(shard_order))
    keys = slice_keys(index, slices, set(data.patients(split)))
    if split == "train":
        plan = plan_train_share(
            keys, shard_order, rank=rank, batches=batches, batch_size=batch_size, epoch=epoch,
            seed=seed, shuffle_buffer=shuffle_buffer,
        )  # fmt: skip
    else:
        plan = plan_test_share(keys, shard_order, batches=batches)
    return plan, _restrict(index, plan)


def _restrict(index: ShardIndex, plan: EpochPlan) -> ShardIndex:
    """The index of the plan's keys only: what the readers need (and what spawned DataLoader
    workers receive pickled), without the other splits' and ranks' units."""
    wanted = {key for batch in plan.batches for key in batch}
    return ShardIndex(
        shards=tuple((name, tuple(k for k in keys if k in wanted)) for name, keys in index.shards),
        shard_of={key: index.shard_of[key] for key in wanted},
        patient_of={key: index.patient_of[key] for key in wanted},
        members={key: index.members[key] for key in wanted},
    )


# --------------------------------------------------------------------------- reading


def read_sample(
    handle: BinaryIO, url: str, key: str, members: Sequence[Member], suffixes: frozenset[str]
) -> dict:
    """The members of one sample with the wanted suffixes, read by offset, as webdataset groups a
    sample: {"__key__": key, "__url__": url, "<suffix>": bytes}."""
    sample = {"__key__": key, "__url__": url}
    for suffix, offset, size in members:
        if suffix in suffixes:
            handle.seek(offset)
            data = handle.read(size)
            if len(data) != size:
                raise PgoError(
                    f"shard {url}: member {key}.{suffix} ends after {len(data)} of "
                    f"{size} bytes (truncated while reading)"
                )
            sample[suffix] = data
    return sample


def read_batches(
    batch_numbers: Iterable[int],
    *,
    plan: EpochPlan,
    index: ShardIndex,
    shard_dir: Path,
    suffixes: frozenset[str],
) -> Iterator[list[dict]]:
    """Stage: batch numbers -> lists of raw samples (read_sample), in plan order.

    Only the wanted members of this reader's keys are read, each by its offset from the index:
    a worker neither parses nor reads what other workers and ranks read.
    """
    with contextlib.ExitStack() as stack:
        handles: dict[str, BinaryIO] = {}
        for number in batch_numbers:
            batch = []
            for key in plan.batches[number]:
                name = index.shard_of[key]
                if name not in handles:
                    handles[name] = stack.enter_context(open(shard_dir / name, "rb"))
                batch.append(
                    read_sample(
                        handles[name], str(shard_dir / name), key, index.members[key], suffixes
                    )
                )
            yield batch


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class UnitSpec:
    """What a unit carries into a batch and how it is transformed.

    image_size: S of the (3, S, S) view, or None for no image; image_format: "png" | "jpg";
    groups: omics group -> feature count; masked: the set was built with --missing mask.
    """

    split: str
    image_size: int | None
    image_format: str | None
    groups: dict[str, int]
    masked: bool
    seed: int
    epoch: int

    @property
    def suffixes(self) -> frozenset[str]:
        """Tar member suffixes to extract."""
        fields = {"surv.json"} | {f"{group}.npy" for group in self.groups}
        if self.image_size is not None:
            fields.add(self.image_format)
        if self.masked:
            fields.add("mask.json")
        return frozenset(fields)

    @property
    def modalities(self) -> list[str]:
        """Mask columns: the groups, then "image" when images are loaded."""
        return [*self.groups, *(["image"] if self.image_size is not None else [])]


def unit_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The augmentation stream of one unit: numpy PCG64 seeded by (seed, epoch, blake2b(key))."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, epoch, digest])


@functools.lru_cache(maxsize=4096)
def load_vector(data: bytes) -> np.ndarray:
    """.npy bytes -> read-only array, never unpickling. Cached on the bytes: every unit of a
    patient carries the same omics vectors, and parsing a .npy header costs more than hashing it."""
    vector = np.load(io.BytesIO(data), allow_pickle=False)
    vector.flags.writeable = False
    return vector


def decode_unit(sample: Mapping, spec: UnitSpec) -> dict:
    """One raw sample -> {"key", "patient", "time", "event", "view": uint8 (3, S, S),
    "<group>": float32 (F,), "mask": {modality: 0 | 1}}. Errors name the shard and key."""
    key, url = sample["__key__"], sample["__url__"]
    where = f"shard {url}: sample {key!r}"

    def field_bytes(suffix: str, modality: str) -> bytes:
        if suffix not in sample:
            present = ", ".join(sorted(k for k in sample if not k.startswith("__")))
            raise PgoError(f"{where} has no field '{suffix}' ({modality}); it has: {present}")
        return sample[suffix]

    try:
        surv = json.loads(field_bytes("surv.json", "survival"))
        unit = {
            "key": key,
            "patient": str(surv["patient"]),
            "time": float(surv["time"]),
            "event": float(surv["event"]),
        }
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exn:
        raise PgoError(
            f"{where}: unreadable surv.json ({type(exn).__name__}: {exn}); it needs "
            f"patient, time, event"
        ) from exn
    if key != unit["patient"] and not key.startswith(unit["patient"] + "__"):
        raise PgoError(
            f"{where}: surv.json names patient {unit['patient']!r}, the key another; keys are "
            f"'<patient>__<unit>'"
        )
    if unit["event"] not in (0.0, 1.0) or not math.isfinite(unit["time"]):
        raise PgoError(
            f"{where}: surv.json time {unit['time']} / event {unit['event']}; valid: "
            f"finite time, event 0 or 1"
        )
    if spec.image_size is not None:
        data = field_bytes(spec.image_format, "image")
        try:
            image = decode_image(data)
        except Exception as exn:  # PIL raises many types on corrupt data
            raise PgoError(
                f"{where}: cannot decode {spec.image_format} ({type(exn).__name__}: {exn})"
            ) from exn
        rng = unit_rng(spec.seed, spec.epoch, key) if spec.split == "train" else None
        unit["view"] = VIEWS[spec.split](image, spec.image_size, rng)
    for group, width in spec.groups.items():
        data = field_bytes(f"{group}.npy", f"omics group '{group}'")
        try:
            vector = load_vector(data)
        except (ValueError, OSError, EOFError) as exn:
            raise PgoError(f"{where}: unreadable {group}.npy ({exn})") from exn
        if vector.shape != (width,) or not np.issubdtype(vector.dtype, np.number):
            raise PgoError(
                f"{where}: {group}.npy is {vector.dtype} {vector.shape}; the manifest "
                f"has {width} '{group}' features (a float vector of shape ({width},))"
            )
        if not np.isfinite(vector).all():
            raise PgoError(f"{where}: {group}.npy has non-finite values")
        unit[group] = vector
    if spec.masked:
        try:
            mask = json.loads(field_bytes("mask.json", "availability mask"))
            unit["mask"] = {m: float(mask[m]) for m in spec.modalities}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exn:
            raise PgoError(
                f"{where}: mask.json lacks or mangles a modality of "
                f"{', '.join(spec.modalities)} ({type(exn).__name__}: {exn})"
            ) from exn
    return unit


def decode_batches(batches: Iterable[list[dict]], *, spec: UnitSpec) -> Iterator[list[dict]]:
    """Stage: lists of raw samples -> lists of decoded units (decode_unit)."""
    for batch in batches:
        yield [decode_unit(sample, spec) for sample in batch]


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, in shared memory (as torch's
    default_collate does), so that handing the batch to the main process does not copy it again."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def collate(
    units: Sequence[Mapping],
    spec: UnitSpec,
    standardizer: Standardizer | None,
    embeddings: EmbeddingTable | None = None,
) -> dict:
    """Decoded units -> one batch dict as the module docstring has it, except that "image" is
    still uint8 (B, 3, S, S) and the float32 fields are numpy arrays (FoldLoader makes tensors of
    them); works for an empty list too. embeddings: the side-car's fields to add, by patient."""
    batch: dict = {
        "key": [u["key"] for u in units],
        "patient": [u["patient"] for u in units],
        "time": np.array([u["time"] for u in units], dtype=np.float32),
        "event": np.array([u["event"] for u in units], dtype=np.float32),
    }
    if spec.image_size is not None:  # uint8 here; FoldLoader normalises it (see there)
        images = _batch_tensor((len(units), 3, spec.image_size, spec.image_size), torch.uint8)
        for row, unit in zip(images, units, strict=True):
            row.copy_(unit["view"])  # whatever the view's strides
        batch["image"] = images
    masks = (
        {m: np.array([u["mask"][m] for u in units], dtype=np.float32) for m in spec.modalities}
        if spec.masked
        else {}
    )
    for group, width in spec.groups.items():
        values = (
            np.stack([u[group] for u in units]).astype(np.float32, copy=False)
            if units
            else np.zeros((0, width), dtype=np.float32)
        )
        if standardizer is not None:
            values = standardizer.apply(group, values)
        if group in masks:  # an unavailable group carries no information: the train mean, 0
            values = values * masks[group][:, None]
        batch[group] = np.ascontiguousarray(values, dtype=np.float32)
    if embeddings is not None:
        for name in embeddings.fields:
            batch[name] = np.ascontiguousarray(embeddings.rows(name, batch["patient"]))
    if spec.masked:
        batch["mask"] = masks
    return batch


def collate_batches(
    batches: Iterable[list[dict]],
    *,
    spec: UnitSpec,
    standardizer: Standardizer | None,
    embeddings: EmbeddingTable | None = None,
) -> Iterator[dict]:
    """Stage: lists of decoded units -> batch dicts (collate)."""
    for units in batches:
        yield collate(units, spec, standardizer, embeddings)


# --------------------------------------------------------------------------- standardisation


def patients_digest(patients: Iterable[str]) -> str:
    """sha256 of the sorted patient ids joined by newlines: names a train set without listing it."""
    return hashlib.sha256("\n".join(sorted(patients)).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature z-scores of omics groups with the statistics of one fold's TRAIN patients.

    z = (x - mean) / std per feature, mean and std (population, ddof = 0) over the train patients,
    ONE vector per patient (the one its units carry), so a patient with many ROIs counts once. A
    std below 1e-8 (a feature constant over the train patients) is replaced by 1. With a mask
    (--missing mask) only patients whose group is available count. Fit once per fold, save with
    the run's outputs; the loader refuses one fitted on other patients than the fold's train set.
    """

    cohort: str
    patients_sha256: str
    n_patients: dict[str, int]
    features: dict[str, tuple[str, ...]]
    mean: dict[str, np.ndarray]  # float64 (F,)
    std: dict[str, np.ndarray]  # float64 (F,)

    @classmethod
    def fit(
        cls,
        shard_dir: Path | str,
        train_patients: Iterable[str],
        groups: Sequence[str],
        *,
        verify: bool = True,
    ) -> Standardizer:
        """Statistics of `groups` over `train_patients`: reads the .npy members (and surv.json,
        mask.json) of each patient's first unit, by offset; no image is read."""
        shard_dir = Path(shard_dir)
        manifest = _require_keys(read_manifest(shard_dir), shard_dir)
        train = sorted(set(train_patients))
        _check_groups(manifest, groups, shard_dir)
        unknown = [p for p in train if p not in manifest["patients"]]
        if unknown:
            raise PgoError(
                f"{shard_dir / MANIFEST}: train patient {unknown[0]!r} is not in the "
                f"manifest ({len(unknown)} such)"
            )
        # with per-shard patients in the manifest, only the shards where a train patient starts
        entries = manifest["shards"]
        starts = None
        if entries and all("patients" in entry for entry in entries):
            start_of: dict[str, str] = {}
            for entry in entries:
                for patient, _ in entry["patients"]:
                    start_of.setdefault(patient, entry["name"])
            starts = {start_of[p] for p in train if p in start_of}
        index = index_shards(shard_dir, manifest, verify=verify, names=starts)
        first: dict[str, str] = {}
        for key, patient in index.patient_of.items():
            first.setdefault(patient, key)
        absent = [p for p in train if p not in first]
        if absent:
            raise PgoError(
                f"{shard_dir}: train patient {absent[0]!r} has no sample in the shards "
                f"({len(absent)} such)"
            )
        spec = UnitSpec(
            split="test",
            image_size=None,
            image_format=None,
            groups={g: len(manifest["groups"][g]) for g in groups},
            masked=manifest.get("missing") == "mask",
            seed=0,
            epoch=0,
        )
        plan = EpochPlan(shard_order=(), batches=(tuple(first[p] for p in train),))
        (samples,) = read_batches(
            [0], plan=plan, index=index, shard_dir=shard_dir, suffixes=spec.suffixes
        )
        units = [decode_unit(sample, spec) for sample in samples]
        mean, std, counts = {}, {}, {}
        for group in groups:
            rows = [u[group] for u in units if not spec.masked or u["mask"][group]]
            if not rows:
                raise PgoError(
                    f"{shard_dir}: omics group '{group}' is available for none of the "
                    f"{len(train)} train patients"
                )
            values = np.stack(rows).astype(np.float64)
            mean[group] = values.mean(axis=0)
            spread = values.std(axis=0)
            std[group] = np.where(spread < _MIN_STD, 1.0, spread)
            counts[group] = len(rows)
        return cls(
            cohort=str(manifest["cohort"]),
            patients_sha256=patients_digest(train),
            n_patients=counts,
            features={g: tuple(manifest["groups"][g]) for g in groups},
            mean=mean,
            std=std,
        )

    def apply(self, group: str, values: np.ndarray) -> np.ndarray:
        """(..., F) raw values -> float32 (..., F) z-scores (x - mean) / std."""
        return ((values - self.mean[group]) / self.std[group]).astype(np.float32)

    def save(self, path: Path | str) -> None:
        """Write as JSON (exact float64 round trip), atomically."""
        record = {
            "kind": "hpc_pgo.standardizer",
            "version": 1,
            "cohort": self.cohort,
            "patients_sha256": self.patients_sha256,
            "groups": {
                g: {
                    "features": list(self.features[g]),
                    "n_patients": self.n_patients[g],
                    "mean": self.mean[g].tolist(),
                    "std": self.std[g].tolist(),
                }
                for g in self.features
            },
        }
        write_bytes(Path(path), json.dumps(record, indent=1, sort_keys=True).encode())

    @classmethod
    def load(cls, path: Path | str) -> Standardizer:
        """Read what save wrote; a malformed file raises PgoError naming it."""
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("kind") != "hpc_pgo.standardizer" or record.get("version") != 1:
                raise ValueError("not an hpc_pgo standardizer version 1")
            groups = record["groups"]
            features = {g: tuple(map(str, v["features"])) for g, v in groups.items()}
            mean = {g: np.asarray(v["mean"], dtype=np.float64) for g, v in groups.items()}
            std = {g: np.asarray(v["std"], dtype=np.float64) for g, v in groups.items()}
            for g in groups:
                if not mean[g].shape == std[g].shape == (len(features[g]),) or (std[g] <= 0).any():
                    raise ValueError(f"group {g!r}: mean/std do not match its features")
            return cls(
                cohort=str(record["cohort"]),
                patients_sha256=str(record["patients_sha256"]),
                n_patients={g: int(v["n_patients"]) for g, v in groups.items()},
                features=features,
                mean=mean,
                std=std,
            )
        except (
            OSError,
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
            AttributeError,
            ValueError,
        ) as exn:
            raise PgoError(f"{path}: not a readable standardizer ({exn})") from exn


def _check_groups(manifest: Mapping, groups: Sequence[str], shard_dir: Path) -> None:
    """Every requested omics group must be one the shard set has."""
    for group in groups:
        if group not in manifest["groups"]:
            have = ", ".join(manifest["groups"]) or "none"
            raise PgoError(
                f"{shard_dir / MANIFEST}: no omics group '{group}' in this shard set; "
                f"it has: {have}"
            )


# --------------------------------------------------------------------------- the loader


class FoldPipeline(wds.DataPipeline):
    """The loader's wds.DataPipeline with len() = number of batches; picklable, so DataLoader
    workers start under fork, spawn and forkserver alike (wds's with_length makes a class on the
    fly, which does not pickle)."""

    def __init__(self, *stages: object, batches: int):
        super().__init__(*stages)
        self.batches = batches

    def __len__(self) -> int:
        return self.batches


class FoldLoader:
    """One pass of one rank over (fold, split): iterate for batches (module docstring).

    Images leave the DataLoader workers as uint8 and are normalised to float32 here, in the
    consuming process: shared memory for float32 images costs more (page faults in worker and
    consumer, 4x the bytes) than the normalisation (one multiply-add per pixel) does. The small
    fields travel as numpy arrays, pickled inline, rather than as tensors that would each take a
    shared-memory segment; here they become tensors without a copy.
    loader: the torch DataLoader; plan: what this rank reads (keys per batch); len() = batches.
    """

    def __init__(self, loader: DataLoader, plan: EpochPlan):
        self.loader = loader
        self.plan = plan

    @property
    def dataset(self) -> FoldPipeline:
        """The webdataset pipeline the DataLoader runs."""
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.plan.batches)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield _as_tensors(batch)


def _as_tensors(batch: dict) -> dict:
    """collate's batch -> the batch of the module docstring: float32 tensors, normalised images."""
    out = {}
    for name, value in batch.items():
        if name == "image":
            out[name] = normalize(value)
        elif isinstance(value, np.ndarray):
            out[name] = torch.from_numpy(value)
        elif name == "mask":
            out[name] = {m: torch.from_numpy(v) for m, v in value.items()}
        else:
            out[name] = value
    return out


def _unchanged(batch: dict) -> dict:
    """DataLoader collate_fn: keep numpy arrays as they are (its default makes tensors of them)."""
    return batch


def _batch_numbers(count: int) -> Iterator[int]:
    """Pipeline source: 0 .. count-1 (a named function so that the pipeline pickles)."""
    return iter(range(count))


def _positive(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PgoError(f"{name} = {value!r}; valid: an integer >= {minimum}")
    return value


def unit_spec(
    data: FoldData,
    split: str,
    *,
    groups: Sequence[str],
    image_size: int | None,
    seed: int,
    epoch: int,
) -> UnitSpec:
    """Check the requested fields against the manifest and describe the units."""
    _check_groups(data.manifest, groups, data.shard_dir)
    image_format = None
    if image_size is not None:
        _positive("image_size", image_size, 1)
        if data.image is None:
            raise PgoError(
                f"{data.shard_dir / MANIFEST}: this shard set has no images (manifest "
                f"image: null); pass image_size=None"
            )
        image_format = data.image.get("format", "png")
        if image_format not in IMAGE_FORMATS:
            raise PgoError(
                f"{data.shard_dir / MANIFEST}: image format {image_format!r}; valid: "
                f"{', '.join(IMAGE_FORMATS)}"
            )
    return UnitSpec(
        split=split,
        image_size=image_size,
        image_format=image_format,
        groups={g: len(data.groups[g]) for g in groups},
        masked=data.manifest.get("missing") == "mask",
        seed=seed,
        epoch=epoch,
    )


def make_loader(
    shard_dir: Path | str,
    fold: int,
    split: str,
    *,
    batch_size: int,
    groups: Sequence[str],
    image_size: int | None,
    standardizer: Standardizer | None,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    shuffle_buffer: int = 256,
    verify: bool = True,
    embeddings: Sequence[str] = (),
    holdout: Sequence[str] = (),
) -> FoldLoader:
    """The batches of rank `rank` of `world_size` for one pass over (fold, split); see the module.

    groups: omics groups to load (manifest names, e.g. ["cnv", "mut"]); image_size: S of the
    (3, S, S) view or None for no images; standardizer: fitted on this fold's train patients
    (Standardizer.fit(shard_dir, open_fold(...).train, groups)), or None for raw omics values.
    verify: check the sha256 of each shard this rank reads against the manifest (once per process
    and file version), unless verified.json vouches for it (index_shards).
    num_workers: DataLoader worker processes; 0 reads in the calling process, with its torch
    thread settings. len(loader) is the number of batches this rank yields. Make one loader per
    epoch (train) with that epoch's number. embeddings: per-patient embedding fields to serve
    (FoldData.embeddings lists them, e.g. ["rna_emb"]); their side-car is checked against the
    manifest's sha256 when verify. holdout: train patients held out for validation (open_fold):
    "train" then serves the others (the standardizer must be fitted on those), "val" serves them
    as "test" serves its patients; empty (the default): no validation split.
    """
    data = open_fold(shard_dir, fold, holdout)
    _check_split(split)
    if split == "val" and not data.val:
        raise PgoError(
            "split 'val' serves the validation patients, and none were given; valid: "
            "make_loader(..., holdout=<train patients held out>) or split 'train' / 'test'"
        )
    _positive("batch_size", batch_size, 1)
    _positive("world_size", world_size, 1)
    _positive("epoch", epoch, 0)
    _positive("seed", seed, 0)
    _positive("num_workers", num_workers, 0)
    _positive("shuffle_buffer", shuffle_buffer, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise PgoError(f"rank = {rank!r}; valid: 0..{world_size - 1} for world_size {world_size}")
    spec = unit_spec(
        data, "test" if split == "val" else split, groups=list(groups), image_size=image_size,
        seed=seed, epoch=epoch,
    )  # fmt: skip
    if standardizer is not None:
        _check_standardizer(standardizer, data, spec)
    table = _embedding_table(data, list(embeddings), verify=verify)
    plan, index = plan_rank(
        data,
        split,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
        epoch=epoch,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        verify=verify,
    )
    pipeline = FoldPipeline(
        functools.partial(_batch_numbers, len(plan.batches)),
        wds.split_by_worker,
        functools.partial(
            read_batches, plan=plan, index=index, shard_dir=data.shard_dir, suffixes=spec.suffixes
        ),
        functools.partial(decode_batches, spec=spec),
        functools.partial(collate_batches, spec=spec, standardizer=standardizer, embeddings=table),
        batches=len(plan.batches),
    )
    log.debug(
        "fold %d %s rank %d/%d epoch %d: %d batches, %d units",
        fold,
        split,
        rank,
        world_size,
        epoch,
        len(plan.batches),
        len(plan.keys),
    )
    loader = DataLoader(pipeline, batch_size=None, num_workers=num_workers, collate_fn=_unchanged)
    return FoldLoader(loader, plan)


def _embedding_table(
    data: FoldData, fields: Sequence[str], *, verify: bool
) -> EmbeddingTable | None:
    """The side-car's arrays of the requested embedding fields only (None when none are asked for)."""
    if not fields:
        return None
    unknown = [f for f in fields if f not in data.embeddings]
    if unknown:
        have = ", ".join(data.embeddings) or "none (run `pgo-shards embed-rna`)"
        raise PgoError(
            f"{data.shard_dir / MANIFEST}: no embedding field {unknown[0]!r}; it has: {have}"
        )
    table = read_embeddings(data.shard_dir, data.manifest, verify=verify)
    return EmbeddingTable(fields={f: table.fields[f] for f in fields}, row_of=table.row_of)


def _check_standardizer(standardizer: Standardizer, data: FoldData, spec: UnitSpec) -> None:
    """The standardizer must come from this fold's train patients and cover the requested groups."""
    if standardizer.patients_sha256 != patients_digest(data.train):
        raise PgoError(
            f"standardizer was fitted on other patients than fold {data.fold}'s "
            f"{len(data.train)} train patients of {data.shard_dir}; fit it with "
            f"Standardizer.fit(shard_dir, open_fold(shard_dir, {data.fold}).train, groups)"
        )
    for group in spec.groups:
        if group not in standardizer.features:
            raise PgoError(
                f"standardizer has no statistics for omics group '{group}'; it has: "
                f"{', '.join(standardizer.features) or 'none'}"
            )
        if list(standardizer.features[group]) != list(data.groups[group]):
            raise PgoError(
                f"standardizer's '{group}' features differ from {data.shard_dir / MANIFEST}"
                f"'s (another cohort or build)"
            )
