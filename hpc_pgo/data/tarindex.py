"""The shard index: where every sample's tar members lie, from the tar headers alone.

``index_shards`` lists the samples of a shard set's shards (all, or the named ones) and checks
each file against its manifest entry before any of its samples can be read: size, tar headers,
sample count, the patients' runs and, unless verified.json vouches for the file
(hpc_pgo.data.shards.trusted), its sha256. Headers and digests are cached per process by (file,
size, mtime) (``TAR_INDEX``), so the next epoch's loader does not read them again.

A sample is webdataset's: consecutive tar members sharing a key (the name up to its first dot);
a key is ``<patient>__<unit>`` (or ``<patient>`` without images). Member = (suffix, offset of its
data in the tar, size): readers seek to it (hpc_pgo.data.stages.read_batches).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tarfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from webdataset.tariterators import base_plus_ext

from hpc_pgo.data.shards import (
    MANIFEST,
    checked_shard_path,
    patient_of_key,
    patient_runs,
    read_verified,
    runs_problem,
    trusted,
)
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

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
    for index, entry in enumerate(manifest["shards"]):  # no shard read from outside the set
        checked_shard_path(shard_dir, entry, index)
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
