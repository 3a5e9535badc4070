"""Image layouts of a cohort: the registry of `images.kind` values.

    rois    ROI image files, whole or tiled (images.tile)                layouts/rois.py
    slides  whole-slide images tiled through OpenSlide (images.slides)   layouts/slides.py

A cohort without images has no `images` section (resolved: None) and no layout. Each layout
implements hpc_pgo.data.layouts.base.Layout; the spec (valid kinds, their option sections),
the build and `pgo-shards build --image-kind` take everything kind-specific from here. A new
layout is one module with a Layout subclass plus its line in LAYOUTS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpc_pgo.data.layouts.base import Layout
from hpc_pgo.data.layouts.rois import RoisLayout
from hpc_pgo.data.layouts.slides import SlidesLayout

LAYOUTS: dict[str, Layout] = {layout.kind: layout for layout in (RoisLayout(), SlidesLayout())}
DEFAULT_KIND = "rois"  # images.kind when a spec leaves it out


def sections() -> tuple[str, ...]:
    """The option section of every registered layout (tile, slides), in registry order: the
    keys of `images` besides kind, dir and patient_regex."""
    return tuple(layout.section for layout in LAYOUTS.values())


def get_layout(kind: Any) -> Layout | None:
    """The layout registered as `kind`, None for anything else (also a value that is no
    string, such as a list written in YAML)."""
    return LAYOUTS.get(kind) if isinstance(kind, str) else None


def layout_of(images: Mapping) -> Layout:
    """The layout of a resolved `images` section (its kind is a registered one)."""
    return LAYOUTS[images["kind"]]


__all__ = ["DEFAULT_KIND", "LAYOUTS", "Layout", "get_layout", "layout_of", "sections"]
