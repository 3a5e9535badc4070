"""The bag loader: batches of PATIENTS of (fold k, train | val | test) for one rank of W, each
sample the bag of the patient's frozen tile features (the side-car of `pgo-shards embed-tiles`,
hpc_pgo.data.tile_features), for the MIL image encoders (hpc_pgo.models.bags).

``make_bag_loader`` has make_loader's call shape and iteration contract (hpc_pgo.data.loader):
one loader per pass, len() = batches of this rank, the stream fixed by (seed, epoch, rank,
world_size, batch_size) whatever num_workers. Its stages, in order::

    batch numbers of this rank        the plan (plan_bags): patients per batch, their tile rows
    -> wds.split_by_worker            worker w of n takes batches b = w (mod n)
    -> collate_bags                   the bags (memory-mapped rows), padding, omics z-scores
    FoldLoader, in the consuming process: tensors

The plan, on patients (no tar is read):

- train (epoch e, seed s): the split's N patients (sorted) in an order permuted by (s, e); n =
  (N // W) // B batches on every rank, B = batch_size (this rank's micro-batch); of the first
  W*n*B patients of that order, rank r takes every W-th from position r, as the unit loader deals
  units, so optimizer step j's global batch is patients [j*W*B, (j+1)*W*B) of the order. Each
  epoch leaves out the last N - W*n*B. A bag of more than max_tiles tiles is a uniform choice of
  max_tiles of them without replacement seeded by (s, e, blake2b(patient)), kept in key order: a
  resumed run sees the same bags.
- test (and val): every patient exactly once over the ranks, patient i (sorted) on rank i mod W,
  every rank ceil(ceil(N / W) / B) batches of near-equal size (<= B); every tile of each bag.

A batch is a dict::

    "key", "patient": list[str] (B)     the patient id (one sample per patient)
    "time", "event": float32 (B,)       from manifest["patients"] (1 = death observed)
    "<group>": float32 (B, F_group)     the patient table's omics, z-scored with the fold's
                                        Standardizer (hpc_pgo.data.patients.patient_vectors)
    "<embedding>": float32 (B, d)       rna_emb ... when asked for, served as stored
    "mask": {modality: float32 (B,)}    1 = available; only for shard sets built with --missing
                                        mask: the groups, and "image"
    "<field>": float32 (B, N, D)        the bags, N = the largest of the batch (>= 1), zero-padded
    "<field>_mask": bool (B, N)         True = a tile, False = padding
    "units": list[list[str]] (B)        each bag's unit names (key minus "<patient>__"), row order

A patient without tiles: under --missing mask a patient whose image is unavailable (its one
placeholder unit has mask.json image 0, or the side-car holds no row of it) gets an empty bag
(mask row all False) and mask["image"] 0; the MIL pools give it z = 0. Without --missing mask
it is refused: PgoError naming the patient and "run `pgo-shards embed-tiles`".
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader

from hpc_pgo.data.epochs import EpochPlan, stream_seed
from hpc_pgo.data.folds import FoldData
from hpc_pgo.data.loader import (
    FoldLoader,
    FoldPipeline,
    batch_numbers,
    embedding_table,
    keep_collated,
    open_pass,
    positive_int,
)
from hpc_pgo.data.patients import check_groups, patient_vectors
from hpc_pgo.data.shards import MANIFEST
from hpc_pgo.data.sidecar import EmbeddingTable
from hpc_pgo.data.stages import read_batches
from hpc_pgo.data.standardizer import Standardizer, check_standardizer
from hpc_pgo.data.tarindex import index_shards
from hpc_pgo.data.tile_features import RECORD_KEY, TileFeatures, read_tile_features
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

FIELD = RECORD_KEY  # the batch field of the bags (model.image.bag.field's default)
REMEDY = "run `pgo-shards embed-tiles`"

__all__ = ["BagPlan", "bag_rows", "make_bag_loader", "plan_bags"]


@dataclass(frozen=True)
class BagPlan:
    """What one rank reads in one pass: its batches of patients, and each patient's bag rows
    (indices into TileFeatures.bag(patient)'s rows, ascending)."""

    batches: tuple[tuple[str, ...], ...]
    rows: dict[str, tuple[int, ...]]

    @property
    def patients(self) -> list[str]:
        """Every patient of the plan, in the order the batches yield them."""
        return [p for batch in self.batches for p in batch]

    def as_epoch_plan(self) -> EpochPlan:
        """The plan as FoldLoader keeps it (keys = patient ids; no shards are read)."""
        return EpochPlan(shard_order=(), batches=self.batches)


def bag_rows(
    n_tiles: int, *, max_tiles: int | None, seed: int, epoch: int, patient: str
) -> tuple[int, ...]:
    """The rows of a bag of `n_tiles`: all of them, or (max_tiles set and exceeded) a uniform
    choice of max_tiles without replacement seeded by (seed, epoch, blake2b(patient)), sorted."""
    if max_tiles is None or n_tiles <= max_tiles:
        return tuple(range(n_tiles))
    digest = int.from_bytes(hashlib.blake2b(patient.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng(stream_seed(seed, epoch, digest))
    return tuple(int(i) for i in np.sort(rng.choice(n_tiles, max_tiles, replace=False)))


def plan_bags(
    patients: Sequence[str],
    tiles: Mapping[str, int],
    split: str,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    epoch: int,
    seed: int,
    max_tiles: int | None,
) -> BagPlan:
    """Rank `rank`'s batches of `patients` (any order; sorted here) and their bag rows (module
    text). tiles: patient -> its number of tiles. A function of its arguments alone."""
    patients = sorted(patients)
    if split == "train":
        order = np.random.default_rng(stream_seed(seed, epoch)).permutation(len(patients))
        per_rank = (len(patients) // world_size) // batch_size * batch_size
        if per_rank == 0:
            raise PgoError(
                f"train split has {len(patients)} patient(s): too few for {world_size} rank(s) x "
                f"batch_size {batch_size} patients (needs >= {world_size * batch_size})"
            )
        own = [patients[i] for i in order[: world_size * per_rank][rank::world_size]]
        batches = tuple(tuple(own[i : i + batch_size]) for i in range(0, per_rank, batch_size))
        rows = {
            p: bag_rows(tiles[p], max_tiles=max_tiles, seed=seed, epoch=epoch, patient=p)
            for p in own
        }
        return BagPlan(batches=batches, rows=rows)
    if not patients:
        raise PgoError(f"{split} split has no patients")
    own = patients[rank::world_size]
    count = math.ceil(math.ceil(len(patients) / world_size) / batch_size)
    bounds = [len(own) * i // count for i in range(count + 1)]
    batches = tuple(tuple(own[bounds[i] : bounds[i + 1]]) for i in range(count))
    return BagPlan(batches=batches, rows={p: tuple(range(tiles[p])) for p in own})


@dataclass(frozen=True)
class BagSpec:
    """The per-patient fields of a pass, read once when the loader is made: the bag field, its
    features, each patient's survival record, z-scored omics and availability (module text)."""

    field: str
    features: TileFeatures
    survival: dict[str, tuple[float, float]]  # patient -> (time, event)
    omics: dict[str, dict[str, np.ndarray]]  # group -> patient -> float32 (F,)
    masks: dict[str, dict[str, float]] | None  # modality -> patient -> 0 | 1 (masked sets)
    units: dict[str, tuple[str, ...]]  # patient -> unit names of its bag rows (all of them)


def collate_bags(
    batch_numbers: Iterator[int],
    *,
    plan: BagPlan,
    spec: BagSpec,
    embeddings: EmbeddingTable | None,
) -> Iterator[dict]:
    """Stage: batch numbers -> batch dicts (module text) of numpy arrays."""
    dim = spec.features.dim
    for number in batch_numbers:
        patients = list(plan.batches[number])
        bags = [
            spec.features.bag(p, plan.rows[p]) if plan.rows[p] else np.zeros((0, dim), np.float32)
            for p in patients
        ]
        width = max([1, *(len(b) for b in bags)])
        values = np.zeros((len(patients), width, dim), dtype=np.float32)
        mask = np.zeros((len(patients), width), dtype=bool)
        for i, bag in enumerate(bags):
            values[i, : len(bag)] = bag
            mask[i, : len(bag)] = True
        batch: dict = {
            "key": list(patients),
            "patient": list(patients),
            "time": np.array([spec.survival[p][0] for p in patients], dtype=np.float32),
            "event": np.array([spec.survival[p][1] for p in patients], dtype=np.float32),
        }
        for group, rows in spec.omics.items():
            width_g = next(iter(rows.values())).shape[0] if rows else 0
            batch[group] = (
                np.stack([rows[p] for p in patients]).astype(np.float32, copy=False)
                if patients
                else np.zeros((0, width_g), dtype=np.float32)
            )
        if embeddings is not None:
            for name in embeddings.fields:
                batch[name] = np.ascontiguousarray(embeddings.rows(name, patients))
        if spec.masks is not None:
            batch["mask"] = {
                m: np.array([of[p] for p in patients], dtype=np.float32)
                for m, of in spec.masks.items()
            }
        batch[spec.field] = values
        batch[f"{spec.field}_mask"] = mask
        batch["units"] = [[spec.units[p][r] for r in plan.rows[p]] for p in patients]
        yield batch


def _placeholders(data: FoldData, patients: Sequence[str], *, verify: bool) -> set[str]:
    """Patients of a --missing mask set whose image is unavailable: their first unit's mask.json
    says image 0 (the builder's placeholder); read by offset from the shards they start in."""
    entries = data.manifest["shards"]
    names = None
    if entries and all("patients" in entry for entry in entries):
        wanted, names = set(patients), set()
        for entry in entries:
            if any(p in wanted for p, _ in entry["patients"]):
                names.add(entry["name"])
    index = index_shards(data.shard_dir, data.manifest, verify=verify, names=names)
    first: dict[str, str] = {}
    for key, patient in index.patient_of.items():
        first.setdefault(patient, key)
    keys = tuple(first[p] for p in patients if p in first)
    plan = EpochPlan(shard_order=(), batches=(keys,))
    (samples,) = read_batches(
        [0], plan=plan, index=index, shard_dir=data.shard_dir, suffixes=frozenset({"mask.json"})
    )
    absent = set()
    for sample in samples:
        try:
            if not json.loads(sample["mask.json"])["image"]:
                absent.add(index.patient_of[sample["__key__"]])
        except (KeyError, ValueError) as err:
            raise PgoError(
                f"shard {sample['__url__']}: sample {sample['__key__']}: mask.json lacks the image "
                f"availability ({err}); rebuild the shard set"
            ) from err
    return absent


def _bag_spec(
    data: FoldData,
    patients: Sequence[str],
    *,
    field: str,
    groups: Sequence[str],
    standardizer: Standardizer | None,
    verify: bool,
) -> BagSpec:
    """Read the split's per-patient fields once; refuse a patient the side-car lacks."""
    features = read_tile_features(data.shard_dir, data.manifest, verify=verify)
    masked = data.manifest.get("missing") == "mask"
    unavailable = _placeholders(data, patients, verify=verify) if masked else set()
    units: dict[str, tuple[str, ...]] = {}
    for patient in patients:
        keys = features.keys(patient)
        if not keys and not masked:
            raise PgoError(
                f"{data.shard_dir / MANIFEST}: patient {patient!r} has no tile features in the "
                f"side-car ({data.shard_dir / 'tile_features'}); {REMEDY} on this shard set"
            )
        units[patient] = (
            () if patient in unavailable else tuple(k[len(patient) + 2 :] for k in keys)
        )
    vectors = patient_vectors(data.shard_dir, data.manifest, groups, patients, verify=verify)
    row = {p: i for i, p in enumerate(vectors.patients)}
    omics: dict[str, dict[str, np.ndarray]] = {}
    for group in groups:
        values = vectors.values[group]
        if standardizer is not None:
            values = standardizer.apply(group, values)
        if masked:  # an unavailable group carries no information: the train mean, 0
            values = values * vectors.available[group][:, None]
        omics[group] = {p: values[row[p]].astype(np.float32) for p in patients}
    masks = None
    if masked:
        masks = {g: {p: float(vectors.available[g][row[p]]) for p in patients} for g in groups}
        masks["image"] = {p: float(bool(units[p])) for p in patients}
    records = data.manifest["patients"]
    survival = {p: (float(records[p]["time"]), float(records[p]["event"])) for p in patients}
    return BagSpec(field, features, survival, omics, masks, units)


def make_bag_loader(
    shard_dir: Path | str,
    fold: int,
    split: str,
    *,
    batch_size: int,
    groups: Sequence[str],
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
    field: str = FIELD,
    max_tiles: int | None = 256,
) -> FoldLoader:
    """The batches of PATIENTS of rank `rank` of `world_size` for one pass over (fold, split);
    see the module. Arguments as make_loader's (batch_size: patients per batch of this rank),
    except: no image_size (bags carry features); shuffle_buffer is accepted and unused (patients
    are permuted whole); field: the batch key of the bags; max_tiles: the train bags' cap (None:
    every tile). verify: check the side-car's sha256 against the manifest."""
    data = open_pass(
        shard_dir, fold, split, holdout, maker="make_bag_loader", batch_size=batch_size,
        world_size=world_size, epoch=epoch, seed=seed, num_workers=num_workers,
        shuffle_buffer=shuffle_buffer, rank=rank,
    )  # fmt: skip
    if max_tiles is not None:
        positive_int("max_tiles", max_tiles, 1)
    check_groups(data.manifest, list(groups), data.shard_dir)
    if standardizer is not None:
        check_standardizer(standardizer, data, list(groups))
    patients = list(data.patients(split))
    spec = _bag_spec(
        data, patients, field=field, groups=list(groups), standardizer=standardizer, verify=verify
    )
    tiles = {p: len(spec.units[p]) for p in patients}
    plan = plan_bags(
        patients, tiles, split, rank=rank, world_size=world_size, batch_size=batch_size,
        epoch=epoch, seed=seed, max_tiles=max_tiles if split == "train" else None,
    )  # fmt: skip
    table = embedding_table(data, list(embeddings), verify=verify)
    pipeline = FoldPipeline(
        functools.partial(batch_numbers, len(plan.batches)),
        wds.split_by_worker,
        functools.partial(collate_bags, plan=plan, spec=spec, embeddings=table),
        batches=len(plan.batches),
    )
    log.debug(
        "fold %d %s rank %d/%d epoch %d: %d batches of patients, %d patients",
        fold, split, rank, world_size, epoch, len(plan.batches), len(plan.patients),
    )  # fmt: skip
    loader = DataLoader(
        pipeline, batch_size=None, num_workers=num_workers, collate_fn=keep_collated
    )
    return FoldLoader(loader, plan.as_epoch_plan())
