"""The fold loader: batches of (fold k, train | val | test) for one rank of W, from WebDataset shards.

``make_loader`` returns a FoldLoader (a torch DataLoader over a webdataset DataPipeline) whose
stages are, in order::

    batch numbers of this rank        the plan (hpc_pgo.data.epochs.plan_rank)
    -> wds.split_by_worker            worker w of n takes batches b = w (mod n)
    -> read_batches                   the wanted tar members, read by offset (hpc_pgo.data.stages)
    -> decode_batches                 PIL decode, train/test view, .npy, surv.json
    -> collate_batches                omics z-scores, stacking
    FoldLoader, in the consuming process: ImageNet normalisation of the uint8 images, tensors

A batch is a dict::

    "key": list[str] (B)       "<patient>__<unit>"
    "patient": list[str] (B)
    "image": float32 (B, 3, S, S), S = image_size, (v / 255 - mean_c) / std_c with ImageNet mean/std
    "<group>": float32 (B, F_group), z-scores with the fold's train statistics (Standardizer)
    "time": float32 (B,) follow-up time, in the cohort's unit (months in the demo)
    "event": float32 (B,) 1 = death observed, 0 = censored
    "mask": {modality: float32 (B,)} 1 = available; only for shard sets built with --missing mask
    "<embedding>": float32 (B, d) per-patient embedding from the side-car `pgo-shards embed-rna`
                   wrote (rna_emb, rna_mlpa), only those asked for with make_loader(embeddings=...);
                   served as stored, NOT standardised (the scGPT embedding is L2-normalised and
                   MLP-A was pretrained on exactly that)

Because batches are fixed by the plan and the DataLoader takes batch b from worker b mod n in
turn, the stream (keys, order, batch boundaries, augmentations) does not depend on num_workers.

Trust: a shard that verified.json vouches for (same size and mtime as when verified) is not
hashed; any other shard is hashed by the rank that reads it before it yields a sample, after one
warning naming `pgo-shards verify` (hpc_pgo.data.tarindex). Bad input raises PgoError naming the
shard (and key): an edited manifest when the fold is opened; a shard whose size, sample count,
patients or sha256 differ from the manifest when the loader is made; a member that ends early,
an image that does not decode, a sample without a requested field while reading.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from hpc_pgo.data.epochs import EpochPlan, plan_rank
from hpc_pgo.data.folds import FoldData, check_split, open_fold
from hpc_pgo.data.patients import check_groups
from hpc_pgo.data.shards import MANIFEST
from hpc_pgo.data.sidecar import EmbeddingTable, read_embeddings
from hpc_pgo.data.stages import UnitSpec, collate_batches, decode_batches, read_batches
from hpc_pgo.data.standardizer import Standardizer, check_standardizer
from hpc_pgo.data.transforms import normalize
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("png", "jpg")


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


def keep_collated(batch: dict) -> dict:
    """DataLoader collate_fn: keep numpy arrays as they are (its default makes tensors of them)."""
    return batch


def batch_numbers(count: int) -> Iterator[int]:
    """Pipeline source: 0 .. count-1 (a named function so that the pipeline pickles)."""
    return iter(range(count))


def positive_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PgoError(f"{name} = {value!r}; valid: an integer >= {minimum}")
    return value


def open_pass(
    shard_dir: Path | str,
    fold: int,
    split: str,
    holdout: Sequence[str],
    *,
    maker: str,
    rank: object,
    **counts: object,
) -> FoldData:
    """The fold of one loader pass (open_fold), after checking what every loader of the project
    takes alike (make_loader, hpc_pgo.data.bags.make_bag_loader; `maker` names it in the
    errors): the split, a val split only with held-out patients, batch_size / world_size /
    shuffle_buffer >= 1, epoch / seed / num_workers >= 0, 0 <= rank < world_size."""
    data = open_fold(shard_dir, fold, holdout)
    check_split(split)
    if split == "val" and not data.val:
        raise PgoError(
            "split 'val' serves the validation patients, and none were given; valid: "
            f"{maker}(..., holdout=<train patients held out>) or split 'train' / 'test'"
        )
    minimum = {"batch_size": 1, "world_size": 1, "shuffle_buffer": 1}
    for name, value in counts.items():
        positive_int(name, value, minimum.get(name, 0))
    world_size = counts["world_size"]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise PgoError(f"rank = {rank!r}; valid: 0..{world_size - 1} for world_size {world_size}")
    return data


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
    check_groups(data.manifest, groups, data.shard_dir)
    image_format = None
    if image_size is not None:
        positive_int("image_size", image_size, 1)
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
    data = open_pass(
        shard_dir, fold, split, holdout, maker="make_loader", batch_size=batch_size,
        world_size=world_size, epoch=epoch, seed=seed, num_workers=num_workers,
        shuffle_buffer=shuffle_buffer, rank=rank,
    )  # fmt: skip
    spec = unit_spec(
        data, "test" if split == "val" else split, groups=list(groups), image_size=image_size,
        seed=seed, epoch=epoch,
    )  # fmt: skip
    if standardizer is not None:
        check_standardizer(standardizer, data, list(spec.groups))
    table = embedding_table(data, list(embeddings), verify=verify)
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
        functools.partial(batch_numbers, len(plan.batches)),
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
    loader = DataLoader(
        pipeline, batch_size=None, num_workers=num_workers, collate_fn=keep_collated
    )
    return FoldLoader(loader, plan)


def embedding_table(
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
