"""Image units of a cohort: ROI files (whole or cut into tiles) and whole-slide tiles.

A unit is what one shard sample carries: (name, extension, encoded bytes, (height, width)).
- ROI not tiled: the file's own bytes when its format is the cohort's (after checking that it
  decodes): a cohort has one image field, `jpg` when every ROI is a .jpg/.jpeg file, else
  `png` (PNG files kept, other formats re-encoded as PNG); unit name = the file stem.
- ROI tiled: RGB tiles of `size` px every `stride` px (row-major, top-left first), PNG encoded
  (lossless, deterministic); unit name = `<stem>_y<top>_x<left>` with 5-digit offsets, so
  sorting names sorts tiles by position. A 1024 px ROI at size 512, stride 256 gives 9 tiles.
- slides: tiles from `hpc_pgo.data.slides.tile_slide`, PNG encoded; unit name =
  `<slide stem>_<tile name>`.
Unit names keep letters, digits, '-' and '_' (anything else becomes '-'), because WebDataset
reads a sample's key as the member name up to its first '.'.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from hpc_pgo.errors import PgoError

ROI_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
)
# Pillow format name -> shard field, for files whose bytes are stored as they are.
KEPT_FORMATS = {"PNG": "png", "JPEG": "jpg"}
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


class Unit(NamedTuple):
    """One image unit: name, shard field ("png" | "jpg"), encoded bytes, (height, width)."""

    name: str
    ext: str
    data: bytes
    size: tuple[int, int]


def unit_name(raw: str) -> str:
    """A key-safe unit name: characters other than letters, digits, '-', '_' become '-'."""
    return re.sub(r"[^A-Za-z0-9_\-]", "-", raw)


def skip_reason(path: Path, kind: str) -> str | None:
    """Why an entry of the image folder is not an image file of a `kind` cohort, or None when
    it is one: a folder (not searched), a hidden file (.DS_Store, macOS '._' copies of images),
    a suffix that is not an image's (notes.txt), something that is not a regular file."""
    suffixes = ROI_SUFFIXES if kind == "rois" else SLIDE_SUFFIXES
    if path.is_dir():
        return "a folder (images.dir is not searched recursively)"
    if not path.is_file():
        return "not a regular file (e.g. a broken link)"
    if path.name.startswith("."):
        return "a hidden file (name starts with '.')"
    if path.suffix.lower() not in suffixes:
        return (
            f"suffix {path.suffix or '(none)'!r} is not an image suffix of a {kind} cohort "
            f"({', '.join(suffixes)})"
        )
    return None


def skipped_entries(directory: str | Path, kind: str) -> list[tuple[Path, str]]:
    """(path, why) of every entry of `directory` that find_image_files leaves out, by name; the
    build lists each in the manifest's `dropped`, so that no file is skipped unseen."""
    entries = sorted(Path(directory).iterdir())
    return [(path, why) for path in entries if (why := skip_reason(path, kind))]


def find_image_files(directory: str | Path, kind: str, patient_regex: str) -> dict[str, list[Path]]:
    """Image files of `directory` (not recursive) grouped by patient, each list sorted by name.

    `patient_regex` is searched in the file name and must have a named group `patient`.
    A file with an image suffix that the regex does not match is an error naming it; entries
    that are no image file (skip_reason) are left out (skipped_entries lists them).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PgoError(f"images.dir {directory}: not a directory")
    suffixes = ROI_SUFFIXES if kind == "rois" else SLIDE_SUFFIXES
    pattern = re.compile(patient_regex)
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if skip_reason(path, kind):
            continue
        match = pattern.search(path.name)
        if match is None or not match.group("patient"):
            raise PgoError(
                f"image {path}: file name does not match images.patient_regex {patient_regex!r}"
            )
        found.setdefault(match.group("patient"), []).append(path)
    if not found:
        raise PgoError(f"images.dir {directory}: no {kind} file ({', '.join(suffixes)})")
    return found


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


PNG_COMPRESS_LEVEL = 1  # zlib level: on H&E-like tiles 3-4x faster than Pillow's 6, same size


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an RGB image (lossless; the same pixels give the same bytes)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def cohort_format(images: Mapping, files: Iterable[Path]) -> str:
    """The one image field of a cohort: "jpg" when it is untiled ROIs all named .jpg/.jpeg
    (their bytes are kept), else "png" (PNG files kept, everything else encoded as PNG)."""
    jpeg = all(p.suffix.lower() in (".jpg", ".jpeg") for p in files)
    return "jpg" if images["kind"] == "rois" and images["tile"] is None and jpeg else "png"


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


def unit_size(images: Mapping, first_file: Path) -> tuple[int, int]:
    """(height, width) of the cohort's units: the tile size, or the first ROI's size."""
    if images["kind"] == "slides":
        return images["slides"]["tile_size"], images["slides"]["tile_size"]
    if images["tile"] is not None:
        return images["tile"]["size"], images["tile"]["size"]
    try:
        with Image.open(first_file) as im:  # reads the header only
            return im.height, im.width
    except _DECODE_ERRORS as exc:
        raise PgoError(f"image {first_file}: does not decode ({exc})") from None


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
        if KEPT_FORMATS.get(image.format or "") == fmt:
            data = path.read_bytes()
        elif fmt == "png":
            data = encode_png(image)
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
    rgb = image.convert("RGB")
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


def slide_units(path: Path, options: Mapping) -> tuple[list[Unit], str | None]:
    """The tiles of one whole-slide image (openslide, via hpc_pgo.data.slides)."""
    from hpc_pgo.data import slides  # openslide is only needed for slide cohorts

    tiles = slides.tile_slide(
        path,
        magnification=options["magnification"],
        tile_size=options["tile_size"],
        max_tiles=options["max_tiles"],
        tissue_threshold=options["tissue_threshold"],
    )
    stem = unit_name(path.stem)
    units = [
        Unit(unit_name(f"{stem}_{name}"), "png", encode_png(im), (im.height, im.width))
        for name, im in tiles
    ]
    if not units:
        return [], (
            f"slide {path.name}: no tile above tissue threshold {options['tissue_threshold']}"
        )
    return units, None


def file_units(path: Path, images: Mapping, fmt: str) -> tuple[list[Unit], str | None]:
    """Units of one image file under the `images` section of a resolved spec."""
    if images["kind"] == "slides":
        return slide_units(path, images["slides"])
    return roi_units(path, images["tile"], fmt)
