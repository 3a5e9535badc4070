"""`images.kind: rois`: ROI image files, whole or cut into tiles (images.tile: size, stride).

- Not tiled: the file's own bytes when its format is the cohort's (after checking that it
  decodes): a cohort has one image field, `jpg` when every ROI is a .jpg/.jpeg file, else
  `png` (8-bit PNG files kept, other formats re-encoded as PNG); unit name = the file stem.
- 16-bit grayscale ROIs (PNG or TIFF, Pillow mode I;16) are stored as 8-bit RGB PNG, scaled
  by the full 16-bit range (hpc_pgo.data.images.to_rgb: v8 = round(v16 / 257)); Pillow's own
  conversion clipped them at 255 (a white image). 32-bit integer or float ROIs are refused.
- Tiled: RGB tiles of `size` px every `stride` px (row-major, top-left first), PNG encoded
  (lossless, deterministic); unit name = `<stem>_y<top>_x<left>` with 5-digit offsets, so
  sorting names sorts tiles by position. A 1024 px ROI at size 512, stride 256 gives 9 tiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from hpc_pgo.data.images import Unit, encode_png, is_eight_bit, to_rgb, unit_name
from hpc_pgo.data.layouts.base import Layout, set_given
from hpc_pgo.data.layouts.checks import check_keys, integer, mapping
from hpc_pgo.errors import PgoError

ROI_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Pillow format name -> shard field, for files whose bytes are stored as they are.
KEPT_FORMATS = {"PNG": "png", "JPEG": "jpg"}
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


def _open(path: Path) -> Image.Image:
    """The fully decoded image (its `format` kept); a file that does not decode is an error."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes every pixel; the data stays after the file is closed
    except _DECODE_ERRORS as exc:
        raise PgoError(
            f"image {path}: does not decode ({' '.join(str(exc).split())}); "
            "valid: PNG, JPEG, TIFF or BMP that Pillow reads"
        ) from None
    return im


def _rgb(image: Image.Image, path: Path) -> Image.Image:
    """to_rgb (16-bit gray scaled to 8 bits, not clipped); a 32-bit image is an error naming it."""
    try:
        return to_rgb(image)
    except ValueError as exc:
        raise PgoError(f"image {path}: {exc}") from None


def tile_offsets(length: int, size: int, stride: int) -> list[int]:
    """Top-left offsets of the tiles along one axis: 0, stride, ... while a tile fits."""
    return list(range(0, length - size + 1, stride))


def roi_units(path: Path, tile: Mapping | None, fmt: str = "png") -> tuple[list[Unit], str | None]:
    """The units of one ROI file, and a reason when it yields none (too small to tile).

    Untiled, the file's bytes are kept when its format is the cohort's `fmt`; a PNG cohort
    re-encodes other formats as PNG; in a JPEG cohort a file that is not JPEG is an error.
    """
    image = _open(path)
    stem = unit_name(path.stem)
    width, height = image.size
    if tile is None:
        if KEPT_FORMATS.get(image.format or "") == fmt and is_eight_bit(image):
            data = path.read_bytes()
        elif fmt == "png":
            data = encode_png(_rgb(image, path))
        else:
            raise PgoError(
                f"image {path}: named like a JPEG but it is {image.format}; in a cohort of "
                ".jpg ROIs every file must be JPEG (or convert them all to PNG)"
            )
        return [Unit(stem, fmt, data, (height, width))], None
    size, stride = tile["size"], tile["stride"]
    ys, xs = tile_offsets(height, size, stride), tile_offsets(width, size, stride)
    if not ys or not xs:
        return [], f"ROI {path.name} is {height}x{width} px, smaller than the {size} px tile"
    rgb = _rgb(image, path)
    units = [
        Unit(
            f"{stem}_y{y:05d}_x{x:05d}",
            "png",
            encode_png(rgb.crop((x, y, x + size, y + size))),
            (size, size),
        )
        for y in ys
        for x in xs
    ]
    return units, None


class RoisLayout(Layout):
    """ROI files of images.dir, each one unit, or tiles of it with images.tile."""

    kind = "rois"
    section = "tile"
    suffixes = ROI_SUFFIXES

    def resolve_section(self, images: Mapping) -> dict | None:
        if images.get("tile") is None:
            return None
        tile = mapping(images["tile"], "images.tile")
        check_keys(tile, ("size", "stride"), "images.tile")
        size = integer(tile.get("size"), "images.tile.size", 1)
        return {"size": size, "stride": integer(tile.get("stride", size), "images.tile.stride", 1)}

    def apply_flags(self, images: dict, flags: Mapping[str, Any]) -> None:
        if flags.get("tile_size") is not None or flags.get("tile_stride") is not None:
            tile = dict(images.get("tile") or {})
            set_given(tile, "size", flags.get("tile_size"))
            set_given(tile, "stride", flags.get("tile_stride"))
            images["tile"] = tile

    def image_format(self, images: Mapping, files: Iterable[Path]) -> str:
        """jpg when untiled and every ROI is named .jpg/.jpeg (their bytes are kept), else png
        (PNG files kept, everything else encoded as PNG)."""
        jpeg = all(p.suffix.lower() in (".jpg", ".jpeg") for p in files)
        return "jpg" if images["tile"] is None and jpeg else "png"

    def manifest_kind(self, images: Mapping) -> str:
        return "tiles" if images["tile"] else "rois"

    def unit_size(self, images: Mapping, first_file: Path) -> tuple[int, int]:
        """The tile size, or the first ROI's size (its header only is read)."""
        if images["tile"] is not None:
            return images["tile"]["size"], images["tile"]["size"]
        try:
            with Image.open(first_file) as im:  # reads the header only
                return im.height, im.width
        except _DECODE_ERRORS as exc:
            raise PgoError(f"image {first_file}: does not decode ({exc})") from None

    def file_units(self, path: Path, images: Mapping, fmt: str) -> tuple[list[Unit], str | None]:
        return roi_units(path, images["tile"], fmt)
