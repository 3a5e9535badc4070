"""The fold reader's stages after the plan: read -> decode -> collate.

- read (``read_batches``): batch numbers -> lists of raw samples; only the wanted members of a
  reader's own keys are read, each by its offset from the shard index, so a worker neither
  parses nor reads what other workers and ranks read.
- decode (``decode_batches``, ``decode_unit``): a raw sample -> a unit: survival, the image's
  train or test view (augmentations drawn from (seed, epoch, key)), omics vectors, mask.
- collate (``collate_batches``, ``collate``): units -> one batch dict of numpy arrays and a
  uint8 image tensor (in shared memory inside a DataLoader worker); omics z-scored with the
  fold's Standardizer, masked groups zeroed, embedding side-car fields added by patient.

``UnitSpec`` says what a unit carries. Errors name the shard and the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from hpc_pgo.data.epochs import EpochPlan
from hpc_pgo.data.members import load_vector
from hpc_pgo.data.sidecar import EmbeddingTable
from hpc_pgo.data.tarindex import Member, ShardIndex
from hpc_pgo.data.transforms import VIEWS, decode_image
from hpc_pgo.errors import PgoError

if TYPE_CHECKING:
    from hpc_pgo.data.standardizer import Standardizer


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
