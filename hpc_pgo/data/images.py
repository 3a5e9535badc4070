"""Image units of a cohort, whatever its layout (hpc_pgo.data.layouts: rois, slides).

A unit is what one shard sample carries: (name, extension, encoded bytes, (height, width)).
How an image file becomes units is its layout's (layouts/rois.py: ROI files whole or tiled;
layouts/slides.py: whole-slide tiles); this module holds what they share: the unit, key-safe
unit names, PNG encoding and the placeholder image of a patient kept without one.
Unit names keep letters, digits, '-' and '_' (anything else becomes '-'), because WebDataset
reads a sample's key as the member name up to its first '.'.
"""

from __future__ import annotations

import io
import re
from typing import NamedTuple

import numpy as np
from PIL import Image


class Unit(NamedTuple):
    """One image unit: name, shard field ("png" | "jpg"), encoded bytes, (height, width)."""

    name: str
    ext: str
    data: bytes
    size: tuple[int, int]


def unit_name(raw: str) -> str:
    """A key-safe unit name: characters other than letters, digits, '-', '_' become '-'."""
    return re.sub(r"[^A-Za-z0-9_\-]", "-", raw)


PNG_COMPRESS_LEVEL = 1  # zlib level: on H&E-like tiles 3-4x faster than Pillow's 6, same size

# Pillow's modes of 16-bit grayscale (PNG bit depth 16, 16-bit TIFF): convert("RGB") clips
# them at 255, so a 16-bit ROI became a (nearly) solid white image.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Modes with no defined range to map to 0..255 (32-bit integer, 32-bit float): refused.
UNSCALED_MODES = frozenset({"I", "F"})


def is_eight_bit(image: Image.Image) -> bool:
    """Whether Pillow's convert("RGB") keeps the image's pixels (not 16-bit or 32-bit gray)."""
    return image.mode not in SIXTEEN_BIT_MODES | UNSCALED_MODES


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB.

    16-bit grayscale is scaled by the full 16-bit range, v8 = round(v16 * 255 / 65535)
    (= round(v16 / 257)): the exact inverse of the usual 8 -> 16 bit expansion v16 = 257 * v8,
    so a 16-bit export of an 8-bit image gives back its very pixels, and every ROI keeps its
    own brightness and contrast. (Scaling by each image's own min..max range would stretch
    each ROI differently: a dim ROI and a bright one would look alike.) 32-bit integer and
    float images have no such range: ValueError (the caller names the file). Other modes
    (L, P, RGBA, CMYK, ...) as Pillow converts them.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image).astype(np.uint32)  # native-endian values 0..65535
        gray = ((pixels * 255 + 32767) // 65535).astype(np.uint8)  # rounded, half up
        return Image.fromarray(gray).convert("RGB")  # uint8 (H, W): mode L
    if image.mode in UNSCALED_MODES:
        kind = "32-bit integer" if image.mode == "I" else "32-bit float"
        raise ValueError(
            f"{kind} pixels (Pillow mode {image.mode}) have no defined range to map to 8 bits; "
            "valid: 8-bit (gray, RGB, RGBA, palette) or 16-bit grayscale images"
        )
    return image if image.mode == "RGB" else image.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image as 8-bit RGB (to_rgb; lossless; the same pixels give the same
    bytes)."""
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def placeholder(fmt: str, size: tuple[int, int]) -> bytes:
    """A black (height, width) image in the cohort's format: the image field of a patient kept
    without image under missing: mask (mask image 0), as missing omics are zero vectors."""
    buf = io.BytesIO()
    black = Image.new("RGB", (size[1], size[0]))
    if fmt == "jpg":
        black.save(buf, format="JPEG", quality=95)
    else:
        black.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()
