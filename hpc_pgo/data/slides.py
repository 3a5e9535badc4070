"""Whole-slide images read with OpenSlide: tissue mask on a thumbnail, tile grid, tile choice.

`tile_slide(path, magnification=20, tile_size=256, max_tiles=64)` cuts one slide into at most
max_tiles RGB tiles of tile_size x tile_size px at the requested objective magnification:

1. Magnification. The scan's own magnification M0 is ``openslide.objective-power``; when a slide
   lacks it (OpenSlide's generic-TIFF driver never sets it) it is derived from the pixel size as
   M0 = 10 / mpp (openslide.mpp-x, micrometres per pixel: 0.25 um/px ~ 40x, 0.5 ~ 20x, the usual
   scanner convention). A request M needs a downsample of d = M0 / M level-0 pixels per tile
   pixel; M above M0 (beyond 2% tolerance) is an error, never an upsampling. magnification=None
   reads level 0 as scanned (d = 1) and needs no metadata.
2. Level. A pyramid level whose downsample is within 2% of d is read as is (d snaps to it);
   otherwise the deepest level whose downsample is <= d (OpenSlide's
   get_best_level_for_downsample) is read and the region resized to tile_size (a box average
   when the sizes differ by a whole factor, else Lanczos).
3. Grid. Non-overlapping tiles of F = round(tile_size * d) level-0 px, cut from the top left;
   only whole tiles inside the slide. Tile (col, row) starts at level-0 (col F, row F) and is
   named ``y{y0:06d}_x{x0:06d}`` (level-0 px, zero-padded, row first: sorting the names sorts
   the tiles in grid order, as the builder's ROI tiles ``_y<top>_x<left>`` do).
4. Tissue. On a thumbnail (16 px per tile side or 1024 px on the long side, whichever is
   larger, at most 4096 px and never above level 0), a
   pixel is tissue when its HSV saturation S (0..255) is >= max(Otsu(S), 20): stained tissue is
   saturated, glass is white/grey. A tile's tissue fraction is the mean of the mask over its
   footprint; tiles with fraction >= tissue_threshold are candidates.
5. Choice (deterministic). When more than max_tiles candidates, keep the max_tiles with the
   highest tissue fraction, ties broken by position (row, then column); tiles are returned in
   grid order (row, then column). A slide without tissue gives an empty list (logged): the
   caller records it as dropped.

Pixels outside the scanned area (OpenSlide returns them transparent) are composited onto white.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

SCALE_TOLERANCE = 0.02  # relative: a level this close to the wanted downsample is read as is
MPP_AT_10X = 10.0  # micrometres per pixel x objective power: 0.25 um/px <-> 40x
THUMBNAIL_PX_PER_TILE = 16
THUMBNAIL_MIN_SIDE = 1024  # a coarse grid still gets a mask finer than its tiles
THUMBNAIL_MAX_SIDE = 4096
MIN_TISSUE_SATURATION = 20  # of 255: below this even Otsu's split is glass noise

OPENSLIDE_ERRORS = (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError)


@dataclass(frozen=True)
class TileGrid:
    """Where tiles are cut: level-0 footprint F (px), the level read, its region size, the grid shape."""

    footprint: int  # tile side in level-0 px
    level: int  # pyramid level the tiles are read from
    read_size: int  # tile side in px at that level (resized to tile_size when different)
    cols: int
    rows: int


def tile_slide(
    path: str | Path,
    *,
    magnification: float | None = None,
    tile_size: int = 256,
    max_tiles: int = 64,
    tissue_threshold: float = 0.5,
) -> list[tuple[str, Image.Image]]:
    """Tiles of one whole-slide image as (name, RGB tile_size x tile_size image), in grid order.

    magnification: objective power of the tiles (e.g. 20); None = level 0 as scanned.
    tissue_threshold: minimum tissue fraction of a tile, in [0, 1]. At most max_tiles tiles, the
    most tissue first, ties by position (module docstring). Raises PgoError naming the file when
    OpenSlide cannot read it, when the magnification exceeds the scan's or cannot be known.
    """
    path = Path(path)
    _check_options(path, magnification, tile_size, max_tiles, tissue_threshold)
    slide = open_slide(path)
    try:
        grid = slide_grid(slide, path, magnification, tile_size)
        if grid.cols == 0 or grid.rows == 0:
            log.warning(
                "%s: slide %s smaller than one tile of %d level-0 px",
                path,
                slide.dimensions,
                grid.footprint,
            )
            return []
        fractions = _read(path, "the thumbnail", lambda: tile_tissue_fractions(slide, grid))
        chosen = choose_tiles(fractions, tissue_threshold, max_tiles)
        if not chosen:
            log.warning("%s: no tile has tissue fraction >= %g", path, tissue_threshold)
        tiles = []
        for row, col in chosen:
            x0, y0 = col * grid.footprint, row * grid.footprint
            name = f"y{y0:06d}_x{x0:06d}"
            tile = _read(
                path, f"tile {name}", lambda x0=x0, y0=y0: read_tile(slide, grid, x0, y0, tile_size)
            )
            tiles.append((name, tile))
        return tiles
    finally:
        slide.close()


def open_slide(path: Path) -> openslide.OpenSlide:
    """openslide.OpenSlide(path), with PgoError naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise PgoError(f"{path}: slide file not found")
    try:
        return openslide.OpenSlide(path)
    except OPENSLIDE_ERRORS as err:
        raise PgoError(
            f"{path}: OpenSlide cannot open it as a whole-slide image ({err}); expected a format "
            "OpenSlide reads (SVS, tiled pyramidal TIFF, NDPI, MRXS, ...)"
        ) from err


def native_magnification(slide: openslide.OpenSlide, path: Path) -> float:
    """Objective power of level 0: openslide.objective-power, else 10 / openslide.mpp-x (um/px)."""
    props = slide.properties
    power = _positive_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
    if power is not None:
        return power
    mpp = _positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
    if mpp is not None:
        return MPP_AT_10X / mpp
    raise PgoError(
        f"{path}: slide has neither {openslide.PROPERTY_NAME_OBJECTIVE_POWER} nor "
        f"{openslide.PROPERTY_NAME_MPP_X}, so magnification cannot be resolved; use "
        "magnification None (level 0 as scanned)"
    )


def slide_grid(
    slide: openslide.OpenSlide, path: Path, magnification: float | None, tile_size: int
) -> TileGrid:
    """The tile grid of `slide` for tiles of tile_size px at `magnification` (None = level 0):
    d = native / magnification (module docstring, step 1), then tile_grid. Shared by tile_slide
    and whoever maps tile names back onto the slide (hpc_pgo.survival.heatmaps)."""
    downsample = 1.0
    if magnification is not None:
        native = native_magnification(slide, path)
        downsample = native / magnification
        if downsample < 1 - SCALE_TOLERANCE:
            raise PgoError(
                f"{path}: magnification {magnification:g} exceeds the scan's {native:g}x; "
                "ask for at most that, or None for level 0"
            )
    return tile_grid(slide, downsample, tile_size)


def tile_grid(slide: openslide.OpenSlide, downsample: float, tile_size: int) -> TileGrid:
    """The tile grid for `downsample` level-0 px per tile px (see the module docstring, steps 2-3)."""
    downsamples = slide.level_downsamples
    close = [i for i, d in enumerate(downsamples) if abs(d / downsample - 1) <= SCALE_TOLERANCE]
    if close:  # snap to that level's own scale: its tiles are read without resampling
        level = close[-1]
        downsample = downsamples[level]
    else:
        level = slide.get_best_level_for_downsample(downsample)
    footprint = max(1, round(tile_size * downsample))
    read_size = max(1, round(footprint / downsamples[level]))
    width, height = slide.dimensions
    return TileGrid(footprint, level, read_size, cols=width // footprint, rows=height // footprint)


def tissue_mask(thumbnail: Image.Image) -> np.ndarray:
    """(H, W) bool: HSV saturation >= max(Otsu threshold of saturation, MIN_TISSUE_SATURATION)."""
    saturation = np.asarray(_on_white(thumbnail).convert("HSV"))[..., 1]
    return saturation >= max(otsu_threshold(saturation), MIN_TISSUE_SATURATION)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold t of uint8 values: maximises the between-class variance of {< t} vs {>= t}.

    sigma_b^2(t) = w0 w1 (mu0 - mu1)^2 over the 256-bin histogram; the smallest maximiser.
    """
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    w0 = np.cumsum(hist)[:-1]  # pixels below t = 1..255
    w1 = hist.sum() - w0
    s0 = np.cumsum(hist * levels)[:-1]
    valid = (w0 > 0) & (w1 > 0)
    if not valid.any():
        return 0
    mu0 = np.divide(s0, w0, out=np.zeros_like(s0), where=valid)
    mu1 = np.divide(s0[-1] + hist[-1] * 255 - s0, w1, out=np.zeros_like(s0), where=valid)
    between = np.where(valid, w0 * w1 * (mu0 - mu1) ** 2, -1.0)
    return int(np.argmax(between)) + 1


def tile_tissue_fractions(slide: openslide.OpenSlide, grid: TileGrid) -> np.ndarray:
    """(rows, cols) tissue fraction of each grid tile, from the mask of a thumbnail.

    The thumbnail has THUMBNAIL_PX_PER_TILE px per tile side or THUMBNAIL_MIN_SIDE px on the long
    side, whichever is larger (capped by THUMBNAIL_MAX_SIDE and level 0); a tile's footprint
    [x0, x0 + F) maps to thumbnail px [round(x0 s), round((x0 + F) s)) with s = thumb / level-0.
    """
    width, height = slide.dimensions
    longest = max(width, height)
    scale = min(
        1.0,
        max(THUMBNAIL_PX_PER_TILE / grid.footprint, THUMBNAIL_MIN_SIDE / longest),
        THUMBNAIL_MAX_SIDE / longest,
    )
    thumbnail = slide.get_thumbnail((max(1, round(width * scale)), max(1, round(height * scale))))
    mask = tissue_mask(thumbnail)
    # Integral image: the sum over any rectangle in four look-ups.
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    sx, sy = mask.shape[1] / width, mask.shape[0] / height
    xs = np.rint(np.arange(grid.cols + 1) * grid.footprint * sx).astype(int).clip(0, mask.shape[1])
    ys = np.rint(np.arange(grid.rows + 1) * grid.footprint * sy).astype(int).clip(0, mask.shape[0])
    x0, x1 = xs[:-1][None, :], np.maximum(xs[1:], xs[:-1] + 1).clip(max=mask.shape[1])[None, :]
    y0, y1 = ys[:-1][:, None], np.maximum(ys[1:], ys[:-1] + 1).clip(max=mask.shape[0])[:, None]
    tissue = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = (y1 - y0) * (x1 - x0)
    return np.divide(tissue, area, out=np.zeros(tissue.shape), where=area > 0)


def choose_tiles(fractions: np.ndarray, threshold: float, max_tiles: int) -> list[tuple[int, int]]:
    """(row, col) of the tiles to keep, in grid order: fraction >= threshold, at most max_tiles,
    the highest fractions first, ties by (row, col)."""
    rows, cols = np.nonzero(fractions >= threshold)
    # np.nonzero lists candidates in (row, col) order; a stable sort keeps that order among ties.
    order = np.argsort(-fractions[rows, cols], kind="stable")[:max_tiles]
    return sorted((int(rows[i]), int(cols[i])) for i in order)


def read_tile(
    slide: openslide.OpenSlide, grid: TileGrid, x0: int, y0: int, tile_size: int
) -> Image.Image:
    """The RGB tile_size x tile_size tile whose level-0 top-left corner is (x0, y0)."""
    region = slide.read_region((x0, y0), grid.level, (grid.read_size, grid.read_size))
    tile = _on_white(region)
    if grid.read_size == tile_size:
        return tile
    if grid.read_size % tile_size == 0:  # whole factor: a box average, several times faster
        return tile.reduce(grid.read_size // tile_size)
    return tile.resize((tile_size, tile_size), Image.Resampling.LANCZOS)


def _on_white(image: Image.Image) -> Image.Image:
    """RGB image with transparent pixels (outside the scanned area) made white."""
    if image.mode != "RGBA" or image.getextrema()[3][0] == 255:  # nothing transparent
        return image.convert("RGB")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def _read(path: Path, what: str, read):
    """Run an OpenSlide read; a corrupt file's OpenSlideError becomes a PgoError naming the file."""
    try:
        return read()
    except OPENSLIDE_ERRORS as err:
        raise PgoError(
            f"{path}: OpenSlide failed reading {what} ({err}); the slide file is corrupt"
        ) from err


def _positive_float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _check_options(
    path: Path, magnification: float | None, tile_size: int, max_tiles: int, tissue_threshold: float
) -> None:
    """PgoError naming the first tile_slide option outside its valid range."""
    checks = [
        (
            "magnification",
            magnification,
            magnification is None
            or (
                isinstance(magnification, (int, float))
                and math.isfinite(magnification)
                and magnification > 0
            ),
            "a number > 0 or None",
        ),
        ("tile_size", tile_size, isinstance(tile_size, int) and tile_size >= 1, "an integer >= 1"),
        ("max_tiles", max_tiles, isinstance(max_tiles, int) and max_tiles >= 1, "an integer >= 1"),
        (
            "tissue_threshold",
            tissue_threshold,
            isinstance(tissue_threshold, (int, float)) and 0 <= tissue_threshold <= 1,
            "a fraction in [0, 1]",
        ),
    ]
    for name, value, ok, valid in checks:
        if not ok or isinstance(value, bool):
            raise PgoError(f"{path}: slide option {name}={value!r} is invalid: must be {valid}")
