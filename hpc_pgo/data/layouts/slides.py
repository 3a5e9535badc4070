"""`images.kind: slides`: whole-slide images cut into tiles through OpenSlide (images.slides:
magnification, tile_size, max_tiles, tissue_threshold).

Tiles come from `hpc_pgo.data.slides.tile_slide` (tissue mask, grid, choice), PNG encoded;
unit name = `<slide stem>_<tile name>`. openslide is imported only when a slide is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpc_pgo.data.images import Unit, encode_png, unit_name
from hpc_pgo.data.layouts.base import Layout, set_given
from hpc_pgo.data.layouts.checks import check_keys, integer, mapping, number
from hpc_pgo.errors import PgoError

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


class SlidesLayout(Layout):
    """Whole-slide images of images.dir, each cut into at most max_tiles tissue tiles."""

    kind = "slides"
    section = "slides"
    suffixes = SLIDE_SUFFIXES

    def resolve_section(self, images: Mapping) -> dict:
        if images.get("tile") is not None:
            raise PgoError(
                "images.tile: only valid with images.kind: rois (slides use images.slides)"
            )
        raw_slides = images.get("slides") or {}
        sl = mapping(raw_slides, "images.slides")
        keys = ("magnification", "tile_size", "max_tiles", "tissue_threshold")
        check_keys(sl, keys, "images.slides")
        # magnification: null (written out) means level 0 as scanned; absent means 20x
        native = "magnification" in raw_slides and raw_slides["magnification"] is None
        mag = None if native else sl.get("magnification", 20)
        if not native and (isinstance(mag, bool) or not isinstance(mag, int | float) or mag <= 0):
            raise PgoError(
                f"images.slides.magnification: expected a number > 0 or null (level "
                f"0 as scanned), got {mag!r}"
            )
        return {
            "magnification": mag,
            "tile_size": integer(sl.get("tile_size", 256), "images.slides.tile_size", 1),
            "max_tiles": integer(sl.get("max_tiles", 64), "images.slides.max_tiles", 1),
            "tissue_threshold": number(
                sl.get("tissue_threshold", 0.5), "images.slides.tissue_threshold", -1e-9, 1 + 1e-9
            ),
        }

    def apply_flags(self, images: dict, flags: Mapping[str, Any]) -> None:
        slides = dict(images.get("slides") or {})
        set_given(slides, "tile_size", flags.get("tile_size"))
        set_given(slides, "magnification", flags.get("magnification"))
        set_given(slides, "max_tiles", flags.get("max_tiles"))
        set_given(slides, "tissue_threshold", flags.get("tissue_threshold"))
        images["slides"], images["tile"] = slides, None

    def manifest_kind(self, images: Mapping) -> str:
        return "slides"

    def unit_size(self, images: Mapping, first_file: Path) -> tuple[int, int]:
        """The tile size (images.slides.tile_size)."""
        return images["slides"]["tile_size"], images["slides"]["tile_size"]

    def file_units(self, path: Path, images: Mapping, fmt: str) -> tuple[list[Unit], str | None]:
        return slide_units(path, images["slides"])
