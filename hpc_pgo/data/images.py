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


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an RGB image (lossless; the same pixels give the same bytes)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
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
