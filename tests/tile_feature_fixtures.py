"""Test helper: write the tile-feature side-car (hpc_pgo.data.tile_features) of a shard set.

Stands in for `pgo-shards embed-tiles` (being built elsewhere; it will replace this): for every
shard of the manifest, the features of its samples in tar order, one pair of files per shard,
and the manifest record. ``key_features`` is a deterministic array per key (for loader tests);
``backbone_features`` runs a real small timm backbone over the shard's decoded images.
"""

from __future__ import annotations

import hashlib
import io
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


def backbone_features(arch: str = "t2t_vit_7", image_size: int = 32, seed: int = 0) -> Features:
    """A real timm backbone (random weights seeded by `seed`, eval mode; hpc_pgo's T2T-ViT-7 by
    default: a random CNN's last zero-initialised norm gives near-constant features) over each
    sample's image, decoded from the shard and ImageNet-normalised; images of `image_size` px."""
    import torch
    from PIL import Image

    from hpc_pgo.data.epochs import EpochPlan
    from hpc_pgo.data.stages import read_batches
    from hpc_pgo.data.tile_features import backbone_digest
    from hpc_pgo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from hpc_pgo.models.image import create_backbone

    torch.manual_seed(seed)
    model = create_backbone(arch, image_size=image_size).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def features(shard_dir: Path, manifest: dict, name: str, keys: Sequence[str]) -> np.ndarray:
        image_format = manifest["image"].get("format", "png")
        index = index_shards(shard_dir, manifest, names={name})
        plan = EpochPlan(shard_order=(name,), batches=(tuple(keys),))
        (samples,) = read_batches(
            [0], plan=plan, index=index, shard_dir=shard_dir, suffixes=frozenset({image_format})
        )
        images = [
            np.asarray(Image.open(io.BytesIO(s[image_format])).convert("RGB")) for s in samples
        ]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return model((x - mean) / std).numpy()

    features.backbone = {
        "arch": arch, "digest": backbone_digest(arch, model.state_dict()),
        "num_features": getattr(model, "head_hidden_size", None) or model.num_features,
    }  # fmt: skip
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
