"""The plan of one pass: which keys one rank reads, in which order, in which batches.

Plans are computed on keys, from the manifest and the shard index, before any payload is read.
A manifest written by `pgo-shards build` lists each shard's patients with their units, so a
rank's share is known from the manifest alone and the rank indexes only the shards holding it
(shard assignment: world_size W > 1 and at least W shards hold units of the split); a set built
before that field, W = 1, or fewer shards than ranks index every shard instead.

- train (epoch e, seed s): shards are taken in an order permuted by (s, e); N train units, n =
  (N // W) // B full batches on every rank (no rank waits for another at the epoch's end; each
  epoch leaves out a different N - W*n*B units). With shard assignment rank r owns the
  contiguous range [r*L, (r+1)*L), L = N // W, of the train units in that shard order (a range
  may begin or end inside a shard) and keeps a choice of n*B of them seeded by (s, e, r)
  (rank_share, plan_train_share); otherwise a seeded choice of W*n*B of all N units is dealt
  round-robin to the ranks (plan_train). Each rank's units are then shuffled by
  `webdataset.shuffle` with a buffer of `shuffle_buffer` units seeded by (s, e, rank), so reads
  stay within a window of the tar stream.
- test (and val): every unit exactly once over the ranks, every rank the same number of batches,
  ceil(ceil(N/W)/B), its units split into near-equal consecutive batches (size <= B; a batch is
  empty only when a rank has fewer units than batches). With shard assignment rank r owns units
  [r*N // W, (r+1)*N // W) in shard order (plan_test_share); otherwise unit i in shard order
  when i = r (mod W) (plan_test).

The plan depends on (seed, epoch, rank, world_size, batch_size, shuffle_buffer) only, never on
the number of DataLoader workers: a resumed fold sees the same stream with any worker count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import webdataset as wds

from hpc_pgo.data.folds import FoldData, split_keys
from hpc_pgo.data.shards import MANIFEST
from hpc_pgo.data.tarindex import ShardIndex, index_shards
from hpc_pgo.errors import PgoError


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one pass: shards in reading order and its batches of keys, in order."""

    shard_order: tuple[str, ...]
    batches: tuple[tuple[str, ...], ...]

    @property
    def keys(self) -> list[str]:
        """Every key of the plan, in the order the batches yield them."""
        return [key for batch in self.batches for key in batch]


def stream_seed(*numbers: int) -> int:
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
    order_rng = np.random.default_rng(stream_seed(seed, epoch))
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
        rng=random.Random(stream_seed(seed, epoch, rank)),
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
        order = np.random.default_rng(stream_seed(seed, epoch)).permutation(len(layout))
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
    chooser = np.random.default_rng(stream_seed(seed, epoch, rank, 1))
    kept = np.sort(chooser.choice(len(keys), batches * batch_size, replace=False))
    shuffle = wds.shuffle(
        bufsize=shuffle_buffer,
        initial=shuffle_buffer,
        rng=random.Random(stream_seed(seed, epoch, rank)),
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
