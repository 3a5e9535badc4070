"""Tiny shard sets in the shard format (notes: shards/README.md), written for the loader's tests.

Real tar files from webdataset.ShardWriter, real PNG encoding with PIL, numpy .npy vectors and a
manifest.json as `pgo-shards build` writes it. Every value is a known function of the patient and
unit so tests can check what the loader returns against the source.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from hpc_pgo.data.shards import read_manifest, write_manifest
from hpc_pgo.data.sidecar import OMICS_TABLE_KEY


@dataclass
class ShardSet:
    """What was written: the directory, the manifest, and each patient's source values."""

    root: Path
    manifest: dict
    omics: dict[str, dict[str, np.ndarray]]  # patient -> group -> float32 (F,)
    keys: dict[str, list[str]]  # patient -> its unit keys, in write order
    images: dict[str, np.ndarray]  # key -> uint8 (H, W, 3)

    def fold(self, k: int) -> dict[str, list[str]]:
        """{"train": [...], "test": [...]} patients of fold k."""
        return self.manifest["splits"]["folds"][k]

    def split_keys(self, k: int, split: str) -> list[str]:
        """Every unit key of fold k's split."""
        return [key for p in self.fold(k)[split] for key in self.keys[p]]


def source_image(key: str, height: int, width: int) -> np.ndarray:
    """A distinct, non-symmetric uint8 (H, W, 3) image per key (noise seeded by the key)."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_shard_set(
    root: Path,
    *,
    n_patients: int = 12,
    units: tuple[int, ...] = (1, 2, 3),
    image_size: tuple[int, int] | None = (40, 48),
    groups: dict[str, int] | None = None,
    n_folds: int = 2,
    maxcount: int = 5,
    missing: str = "drop",
    drop_field: str | None = None,
    seed: int = 0,
) -> ShardSet:
    """Write patients P00.. with units[i % len(units)] units each (keys `P03__roi1`), in sorted
    order, maxcount samples per shard; fold k tests patients i with i % n_folds == k.

    Omics: group g of patient i is N(10 * (i % 4) + j, (1 + j)^2) for feature j (float32), so
    train-only and all-patient statistics differ. missing="mask" writes mask.json with the first
    group unavailable for every third patient. drop_field leaves that member out of every sample.
    """
    groups = {"cnv": 5, "mut": 3} if groups is None else groups
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patients = [f"P{i:02d}" for i in range(n_patients)]
    omics, keys, images, records = {}, {}, {}, {}
    with wds.ShardWriter(
        str(root / "shard-%06d.tar"), maxcount=maxcount, verbose=0, mtime=0
    ) as sink:
        for i, patient in enumerate(patients):
            omics[patient] = {
                g: (
                    10.0 * (i % 4) + np.arange(n) + (1 + np.arange(n)) * rng.standard_normal(n)
                ).astype(np.float32)
                for g, n in groups.items()
            }
            count = units[i % len(units)] if image_size else 1
            keys[patient] = [f"{patient}__roi{k}" if image_size else patient for k in range(count)]
            time, event = 5.0 + 3 * i, i % 2
            records[patient] = {"units": count, "time": time, "event": event}
            for k, key in enumerate(keys[patient]):
                sample = {
                    "__key__": key,
                    "surv.json": json.dumps(
                        {
                            "patient": patient,
                            "unit": f"roi{k}" if image_size else "",
                            "time": time,
                            "event": event,
                        }
                    ).encode(),
                }
                if image_size:
                    images[key] = source_image(key, *image_size)
                    sample["png"] = _png(images[key])
                for g, vector in omics[patient].items():
                    sample[f"{g}.npy"] = _npy(vector)
                if missing == "mask":
                    sample["mask.json"] = json.dumps(
                        {
                            **{g: 1 for g in groups},
                            next(iter(groups)): int(i % 3 != 0),
                            **({"image": 1} if image_size else {}),
                        }
                    ).encode()
                if drop_field:
                    sample.pop(drop_field)
                sink.write(sample)
    shards = sorted(root.glob("shard-*.tar"))
    counts = [sum(1 for _ in wds.WebDataset(str(s), shardshuffle=False)) for s in shards]
    folds = [
        {
            "train": sorted(p for i, p in enumerate(patients) if i % n_folds != k),
            "test": sorted(p for i, p in enumerate(patients) if i % n_folds == k),
        }
        for k in range(n_folds)
    ]
    manifest = {
        "schema_version": 1,
        "cohort": "tiny",
        "created_by": "tests",
        "groups": {g: [f"{g}_{j}" for j in range(n)] for g, n in groups.items()},
        "genes": {},
        "image": (
            {"format": "png", "kind": "rois", "size": list(image_size)} if image_size else None
        ),
        "counts": {
            "patients": n_patients,
            "units": sum(len(v) for v in keys.values()),
            "events": sum(r["event"] for r in records.values()),
        },
        "patients": records,
        "shards": [
            {
                "name": s.name,
                "samples": c,
                "bytes": s.stat().st_size,
                "sha256": hashlib.sha256(s.read_bytes()).hexdigest(),
            }
            for s, c in zip(shards, counts, strict=True)
        ],
        "splits": {"kind": "kfold", "source": "tests", "folds": folds},
        "dropped": [],
        "missing": missing,
        "spec": {},
    }
    write_manifest(root, manifest)  # as the build writes it: sealed with its digest
    return ShardSet(root=root, manifest=manifest, omics=omics, keys=keys, images=images)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    return buffer.getvalue()


def _npy(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vector, allow_pickle=False)
    return buffer.getvalue()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def distributed_pass(rank: int, world_size: int, port: int, shard_dir: str, result: str) -> None:
    """One rank of a real gloo group (torch.multiprocessing.spawn target).

    Iterates fold 0's test loader and one train epoch; all_gather_object the test keys and the
    train batch count; rank 0 writes {"test_keys": [...all ranks...], "train_batches": [...]}.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    import torch
    import torch.distributed as dist

    from hpc_pgo.data.loader import make_loader

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        common = dict(
            batch_size=3,
            groups=["cnv"],
            image_size=32,
            standardizer=None,
            rank=rank,
            world_size=world_size,
        )
        # rank 1 reads its test units through a DataLoader worker (started by spawn here)
        test_keys = [
            k
            for batch in make_loader(shard_dir, 0, "test", num_workers=rank, **common)
            for k in batch["key"]
        ]
        train_batches = sum(1 for _ in make_loader(shard_dir, 0, "train", epoch=1, **common))
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, {"test_keys": test_keys, "train_batches": train_batches})
        if rank == 0:
            out = {
                "test_keys": [g["test_keys"] for g in gathered],
                "train_batches": [g["train_batches"] for g in gathered],
            }
            Path(result).write_text(json.dumps(out))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def without_table(root: Path, out: Path) -> Path:
    """A copy of the set without its patient table, as built before it."""
    shutil.copytree(root, out)
    manifest = read_manifest(out)
    (out / manifest.pop(OMICS_TABLE_KEY)["file"]).unlink()
    write_manifest(out, manifest)
    return out
