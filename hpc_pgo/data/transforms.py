"""Image units into model input: decode, the train/test views, normalisation.

Conventions: an image tensor is CHW, RGB. `decode_image` gives uint8 (3, H, W); a view is uint8
(3, S, S) with S = image_size; `normalize` gives float32 (3, S, S) with
x = (v / 255 - mean_c) / std_c, mean = IMAGENET_MEAN, std = IMAGENET_STD (timm's
IMAGENET_DEFAULT_MEAN/STD): the loader's batches are in these units, whatever the model.
A backbone pretrained with other statistics (CLIP's, Inception's 0.5/0.5, ...) gets its own:
the image branch maps the batch with `renormalization` (hpc_pgo.models.image), exactly, since
both are per-channel affine maps of the same pixels.

Scale is never changed on purpose: ROIs are stored at a fixed magnification, so the train view is
a random S x S crop and the test view the centre S x S crop of the same pixels. Only an image
smaller than S on a side is first resized (shorter side to S, antialiased) in both splits alike.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from hpc_pgo.data.images import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded PNG/JPEG bytes -> contiguous uint8 (3, H, W) RGB tensor (PIL decodes; grey/RGBA
    become RGB, 16-bit grey is scaled to 8 bits: hpc_pgo.data.images.to_rgb). Contiguous because flips and rotations of a strided HWC->CHW view are several
    times slower; the HWC->CHW copy is the only copy after PIL's own.

    Raises PIL's error (OSError, SyntaxError, ...) on corrupt bytes; the loader wraps it with the
    shard and key.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode != "RGB":
            image = to_rgb(image)  # 16-bit gray scaled, not clipped at 255 (a set built before)
        pixels = np.asarray(image)  # read-only (H, W, 3) over PIL's bytes
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def at_least(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (3, H, W) so that min(H, W) >= size (shorter side to size, antialiased); else as is."""
    if min(image.shape[-2:]) >= size:
        return image
    return F.resize(image, [size], antialias=True)


def random_view(image: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Train view: a uniform random size x size crop, then a uniform element of the dihedral group
    D4 (the 8 flips and quarter turns of a square).

    Draws, in this order: top in [0, H - size], left in [0, W - size], horizontal flip (p = 1/2),
    k in {0, 1, 2, 3} quarter turns counter-clockwise. These 8 outcomes are all of D4: a vertical
    flip is a horizontal flip then 2 quarter turns, so no separate vertical flip is drawn. Rotation
    by k*90 degrees is torch.rot90: a permutation of pixels, no interpolation.
    (3, H, W) -> (3, size, size).
    """
    image = at_least(image, size)
    height, width = image.shape[-2:]
    top, left, flip, turns = rng.integers(
        [0, 0, 0, 0], [height - size + 1, width - size + 1, 2, 4]
    ).tolist()
    view = F.crop(image, top, left, size, size)
    if flip:
        view = F.horizontal_flip(view)
    return torch.rot90(view, turns, dims=(-2, -1)) if turns else view


def center_view(
    image: torch.Tensor, size: int, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Test view: the centre size x size crop (deterministic; rng is ignored). (3, H, W) -> (3, S, S)."""
    return F.center_crop(at_least(image, size), [size, size])


# (v / 255 - mean) / std = v * scale + shift, per channel: one multiply-add per pixel
_SCALE = 1.0 / (255.0 * torch.tensor(IMAGENET_STD, dtype=torch.float64))
_SHIFT = -torch.tensor(IMAGENET_MEAN, dtype=torch.float64) / torch.tensor(
    IMAGENET_STD, dtype=torch.float64
)


def renormalization(
    source: tuple[Sequence[float], Sequence[float]], target: tuple[Sequence[float], Sequence[float]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), float32 (3,) each, such that x * scale_c + shift_c turns pixels normalised
    with source = (mean, std) into the same pixels normalised with target = (mean', std'):

        v / 255 = x * std_c + mean_c   =>   x' = (v / 255 - mean'_c) / std'_c
                                             = x * (std_c / std'_c) + (mean_c - mean'_c) / std'_c
    """
    (mean, std), (mean_t, std_t) = (
        [torch.tensor(v, dtype=torch.float64) for v in pair] for pair in (source, target)
    )
    scale = std / std_t
    shift = (mean - mean_t) / std_t
    return scale.to(torch.float32), shift.to(torch.float32)


def normalize(views: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, S, S) -> float32 (..., 3, S, S): (v / 255 - IMAGENET_MEAN_c) / IMAGENET_STD_c.

    The same numbers as torchvision's to_dtype(scale=True) then normalize, in two passes instead
    of four (it runs on every batch).
    """
    return normalize_(views.to(torch.float32))


def normalize_(pixels: torch.Tensor) -> torch.Tensor:
    """In place: float32 (..., 3, S, S) holding 0..255 -> (v / 255 - mean_c) / std_c; returns it."""
    return pixels.mul_(_SCALE.to(torch.float32).view(3, 1, 1)).add_(
        _SHIFT.to(torch.float32).view(3, 1, 1)
    )


# One view per split: train sees augmented crops, test the same deterministic crop every time.
VIEWS: dict[str, Callable[[torch.Tensor, int, np.random.Generator], torch.Tensor]] = {
    "train": random_view,
    "test": center_view,
}
