"""Attention heatmaps of attention-MIL (ABMIL) folds over slide thumbnails (OpenSlide).

``draw_run(run_dir, slides_dir=None, folds=None, patients=None, top=5, out=None)`` reads each
``RUN_DIR/fold_<k>/attention.csv`` (columns patient, unit, attention: the softmax weight of the
unit in its patient's bag, summing to 1 per patient) and, per fold, patient and slide, writes

    <out>/fold_<k>/<patient>/<slide stem>.png    the slide's thumbnail (long side THUMBNAIL_SIDE
                                                 px, 1:1 at the left of the PNG) with each tile
                                                 of the fold's attention painted over its
                                                 footprint, then a LEGEND_WIDTH px colour bar
                                                 at the right (PNG size = thumbnail width +
                                                 LEGEND_WIDTH, thumbnail height)
    <out>/fold_<k>/heatmaps.json                 the index: per slide patient, slide, png
                                                 (relative to <out>), n_tiles, footprint and the
                                                 `top` tiles (unit, x0, y0, attention)

out defaults to RUN_DIR/heatmaps. A patient tested in several folds is drawn once per fold (each
fold's model weighs its tiles differently).

Where the tiles are. A slide cohort's unit is ``<slide stem>_y{y0:06d}_x{x0:06d}``
(hpc_pgo.data.layouts.slides; the stem sanitised by hpc_pgo.data.images.unit_name), (x0, y0) the
level-0 px of the tile's top-left corner. Its footprint F level-0 px is the slide's TileGrid
(hpc_pgo.data.slides.slide_grid) at the cohort's images.slides magnification and tile_size,
which the shard set's manifest records in ``spec.images`` (the run's config.yaml names the
shard set: data.shards). The slide files are looked up in `slides_dir` (default: the
manifest's images.dir, the folder the cohort was built from) by sanitised stem. A footprint
[x0, x0 + F) maps to thumbnail px [round(x0 s), round((x0 + F) s)), s = thumbnail / level-0
width (as hpc_pgo.data.slides.tile_tissue_fractions maps it).

Colour. Per slide, min-max normalised attention a = (w - min w) / (max w - min w) over that
slide's tiles in the fold (a = 1 for every tile when they are all equal, e.g. one tile), coloured
by COLORMAP and blended over the thumbnail: pixel = (1 - ALPHA) thumbnail + ALPHA cmap(a),
rounded. Min-max, not rank: a bag's softmax is usually peaked, and min-max keeps one dominant
tile visibly alone where ranks would spread the colours evenly. Pixels outside every attention
tile are the thumbnail's own. The colour bar is labelled with the slide's raw min and max weight.

Bad input (PgoError, one line naming the file, row or folder): a run without any attention.csv
(the run did not train model.image.encoder=abmil); a fold asked for by `folds` without one; a
unit that does not parse as a slide tile, or whose corner is off the slide's tile grid; a slide
stem with no file in slides_dir; a cohort that is not a slide cohort (this draws slides only).
Every attention.csv, slide file and tile grid is read and checked before the first file is
written, and every file is written atomically (hpc_pgo.atomic): bad input leaves no PNG, and no
file is ever partial; a fold's index is written after its PNGs. Drawing is Pillow
for the pixels (exact, no resampling) and matplotlib's Agg canvas for the colour bar.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from hpc_pgo.atomic import write_bytes, write_text
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

ATTENTION = "attention.csv"
ATTENTION_COLUMNS = ("patient", "unit", "attention")
INDEX = "heatmaps.json"
DEFAULT_OUT = "heatmaps"
THUMBNAIL_SIDE = 1024  # px, long side of the thumbnail (slide.get_thumbnail bound)
LEGEND_WIDTH = 112  # px of colour bar beside the thumbnail
COLORMAP = "inferno"
ALPHA = 0.5
NORMALISATION = "min-max per slide: (w - min) / (max - min) over the slide's tiles in the fold"
ABMIL_HINT = "model.image.encoder=abmil"
# unit_name(f"{stem}_y{y0:06d}_x{x0:06d}"): the stem may hold '_', the suffix cannot be ambiguous
TILE_UNIT = re.compile(r"^(?P<stem>.+)_y(?P<y0>\d{6,})_x(?P<x0>\d{6,})$")
SAFE_ID = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")  # a patient id usable as a folder name
_FOLD_DIR = re.compile(r"^fold_(\d+)$")


@dataclass
class SlideAttention:
    """One slide's attention tiles in one fold: corners (level-0 px) and weights."""

    patient: str
    stem: str  # sanitised stem, as in the unit names
    units: list[str] = field(default_factory=list)
    x0: list[int] = field(default_factory=list)
    y0: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # CSV line numbers, for errors


# --- reading -----------------------------------------------------------------------------------


def parse_tile_unit(unit: str) -> tuple[str, int, int]:
    """(slide stem, x0, y0) of a slide-tile unit name ``<stem>_y{y0:06d}_x{x0:06d}``; ValueError
    when it is not one."""
    match = TILE_UNIT.match(unit)
    if match is None:
        raise ValueError(unit)
    return match["stem"], int(match["x0"]), int(match["y0"])


def read_attention(path: Path) -> dict[tuple[str, str], SlideAttention]:
    """(patient, slide stem) -> its tiles, from one fold's attention.csv. PgoError naming the file
    and line for a missing column, a non-finite or negative weight, a unit that is not a slide
    tile (``<slide stem>_y<6+ digits>_x<6+ digits>``), a repeated (patient, unit), or a patient id
    that cannot be a folder name (it names the output folder)."""
    try:
        table = pd.read_csv(path, dtype={"patient": str, "unit": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise PgoError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in ATTENTION_COLUMNS if c not in table.columns]
    if missing:
        raise PgoError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(ATTENTION_COLUMNS)}"
        )
    slides: dict[tuple[str, str], SlideAttention] = {}
    seen: dict[tuple[str, str], int] = {}
    for i, (patient, unit, weight) in enumerate(
        zip(table["patient"], table["unit"], table["attention"], strict=True)
    ):
        line = i + 2  # 1-based, after the header
        try:
            value = float(weight)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise PgoError(f"{path}, line {line}: attention {weight!r} is not a finite weight >= 0")
        weight = value
        try:
            stem, x0, y0 = parse_tile_unit(str(unit))
        except ValueError:
            raise PgoError(
                f"{path}, line {line}: unit {unit!r} is not a slide tile; expected "
                "<slide stem>_y<y0, 6+ digits>_x<x0, 6+ digits> (level-0 px, as a slide cohort's "
                "units are named)"
            ) from None
        patient = str(patient)
        if not SAFE_ID.match(patient):
            raise PgoError(
                f"{path}, line {line}: patient {patient!r} cannot name a folder; valid: letters, "
                "digits, '.', '_', '-' (not starting with '.')"
            )
        if (patient, unit) in seen:
            raise PgoError(
                f"{path}, line {line}: patient {patient} unit {unit} repeats line "
                f"{seen[(patient, unit)]}; one weight per tile"
            )
        seen[(patient, unit)] = line
        entry = slides.setdefault((patient, stem), SlideAttention(patient, stem))
        entry.units.append(str(unit))
        entry.x0.append(x0)
        entry.y0.append(y0)
        entry.weights.append(weight)
        entry.rows.append(line)
    return slides


def slide_files(slides_dir: Path) -> dict[str, Path]:
    """Sanitised stem -> slide file of slides_dir (its OpenSlide suffixes, recursively, as the
    builder finds them). PgoError for a missing folder or two files of one sanitised stem."""
    from hpc_pgo.data.images import unit_name
    from hpc_pgo.data.layouts.slides import SLIDE_SUFFIXES

    if not slides_dir.is_dir():
        raise PgoError(f"--slides {slides_dir}: no such folder (the folder of the cohort's slides)")
    found: dict[str, Path] = {}
    for path in sorted(slides_dir.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in SLIDE_SUFFIXES:
            continue
        stem = unit_name(path.stem)
        if stem in found:
            raise PgoError(
                f"{slides_dir}: slides {found[stem]} and {path} both give unit stem {stem!r}"
            )
        found[stem] = path
    return found


def slide_options(run_dir: Path) -> tuple[dict, str]:
    """(images.slides options, images.dir) of the run's shard set: config.yaml's data.shards ->
    manifest.json's spec.images. PgoError when the run has no config.yaml, the shard set is gone,
    or the cohort is not a slide cohort."""
    from hpc_pgo.config import CONFIG_FILE, load_config
    from hpc_pgo.data.shards import read_manifest

    if not (run_dir / CONFIG_FILE).is_file():
        raise PgoError(
            f"{run_dir}: no {CONFIG_FILE}; the heatmaps need the run's shard set (data.shards) for "
            "the cohort's images.slides magnification and tile_size"
        )
    shards = Path(str(load_config(run_dir).data.shards))
    manifest = read_manifest(shards, check_digest=False)
    images = (manifest.get("spec") or {}).get("images") or {}
    kind = (manifest.get("image") or {}).get("kind") or images.get("kind")
    if kind != "slides":
        raise PgoError(
            f"{shards}: images.kind is {kind!r}; heatmaps draw slide cohorts only "
            "(images.kind: slides)"
        )
    return images["slides"], images.get("dir", "")


def fold_attention(run_dir: Path, folds: Iterable[int] | None) -> tuple[dict[int, Path], list[str]]:
    """fold -> its attention.csv, and a line per fold directory skipped for having none.

    folds None: every fold_<k> directory; those without attention.csv are skipped (listed).
    Given folds must each have one (PgoError naming the file). No attention.csv at all: PgoError
    saying the run did not train attention-MIL."""
    if not run_dir.is_dir():
        raise PgoError(f"{run_dir}: no such run directory")
    if folds is None:
        found = sorted(
            int(m[1]) for p in run_dir.iterdir() if p.is_dir() and (m := _FOLD_DIR.match(p.name))
        )
        paths = {k: run_dir / f"fold_{k}" / ATTENTION for k in found}
        skipped = [f"{p}: missing (fold {k} skipped)" for k, p in paths.items() if not p.is_file()]
        paths = {k: p for k, p in paths.items() if p.is_file()}
        if not paths:
            raise PgoError(
                f"{run_dir}: no fold_<k>/{ATTENTION} in any of its {len(found)} fold "
                f"directories; attention heatmaps need a run trained with {ABMIL_HINT}"
            )
        return paths, skipped
    paths = {k: run_dir / f"fold_{k}" / ATTENTION for k in folds}
    for k, path in paths.items():
        if not path.is_file():
            raise PgoError(
                f"{path}: missing; fold {k} has no attention weights (train it with "
                f"{ABMIL_HINT}, or leave it out of --folds)"
            )
    return paths, []


# --- drawing -----------------------------------------------------------------------------------


def normalise(weights: np.ndarray) -> np.ndarray:
    """(n,) min-max normalised weights in [0, 1]; all ones when they are all equal."""
    low, high = float(weights.min()), float(weights.max())
    if high - low <= 0:
        return np.ones_like(weights, dtype=np.float64)
    return (weights - low) / (high - low)


def paint(
    thumbnail: Image.Image,
    level0_size: tuple[int, int],
    footprint: int,
    corners: np.ndarray,
    weights: np.ndarray,
    colormap: str = COLORMAP,
    alpha: float = ALPHA,
) -> Image.Image:
    """The RGB thumbnail with each tile blended with cmap(min-max weight) over its footprint.

    level0_size: (width, height) of level 0 in px; corners: (n, 2) level-0 (x0, y0);
    weights: (n,) attention. Pixel = round((1 - alpha) thumb + alpha cmap(a)); others untouched.
    """
    from matplotlib import colormaps

    rgb = np.asarray(thumbnail.convert("RGB"), dtype=np.float64).copy()
    height, width = rgb.shape[:2]
    sx, sy = width / level0_size[0], height / level0_size[1]
    colours = colormaps[colormap](normalise(np.asarray(weights, dtype=np.float64)))[:, :3] * 255
    for (x0, y0), colour in zip(corners, colours, strict=True):
        c0, c1 = round(x0 * sx), min(width, max(round((x0 + footprint) * sx), round(x0 * sx) + 1))
        r0, r1 = round(y0 * sy), min(height, max(round((y0 + footprint) * sy), round(y0 * sy) + 1))
        rgb[r0:r1, c0:c1] = (1 - alpha) * rgb[r0:r1, c0:c1] + alpha * colour
    return Image.fromarray(np.rint(rgb).clip(0, 255).astype(np.uint8), "RGB")


def legend(height: int, low: float, high: float, colormap: str = COLORMAP) -> Image.Image:
    """A LEGEND_WIDTH x height RGB colour bar, ticks at the slide's raw min and max weight."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(LEGEND_WIDTH / dpi, max(height, 1) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.08, 0.16, 0.84))
    mappable = ScalarMappable(Normalize(0, 1), colormaps[colormap])
    bar = fig.colorbar(mappable, cax=ax)
    bar.set_ticks([0, 1], labels=[f"{low:.3g}", f"{high:.3g}"], fontsize=7)
    bar.set_label("attention (min-max)", fontsize=7)
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), "RGB")
    return (
        image.resize((LEGEND_WIDTH, max(height, 1)))
        if image.size != (LEGEND_WIDTH, height)
        else image
    )


def check_tiles(path: Path, tiles: SlideAttention, options: Mapping, attention_file: Path) -> int:
    """The slide's tile footprint F (level-0 px) at the cohort's options; PgoError naming
    attention_file and line for a tile whose corner is not on that grid (units of another cohort
    configuration)."""
    from hpc_pgo.data import slides as wsi

    slide = wsi.open_slide(path)
    try:
        grid = wsi.slide_grid(slide, path, options.get("magnification"), int(options["tile_size"]))
    finally:
        slide.close()
    f = grid.footprint
    for unit, x0, y0, line in zip(tiles.units, tiles.x0, tiles.y0, tiles.rows, strict=True):
        if x0 % f or y0 % f or x0 // f >= grid.cols or y0 // f >= grid.rows:
            raise PgoError(
                f"{attention_file}, line {line}: unit {unit!r} is not a tile of {path.name}'s "
                f"grid ({grid.cols} x {grid.rows} tiles of {f} level-0 px at magnification "
                f"{options.get('magnification')}, tile_size {options['tile_size']})"
            )
    return f


def heatmap_png(path: Path, tiles: SlideAttention, footprint: int) -> bytes:
    """PNG bytes of one slide's heatmap: painted thumbnail, then the colour bar at its right."""
    from hpc_pgo.data import slides as wsi

    slide = wsi.open_slide(path)
    try:
        thumbnail = slide.get_thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE)).convert("RGB")
        level0 = slide.dimensions
    finally:
        slide.close()
    weights = np.asarray(tiles.weights, dtype=np.float64)
    corners = np.column_stack([tiles.x0, tiles.y0])
    painted = paint(thumbnail, level0, footprint, corners, weights)
    canvas = Image.new("RGB", (painted.width + LEGEND_WIDTH, painted.height), "white")
    canvas.paste(painted, (0, 0))
    canvas.paste(legend(painted.height, weights.min(), weights.max()), (painted.width, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


# --- the run -----------------------------------------------------------------------------------


def draw_run(
    run_dir: str | Path,
    slides_dir: str | Path | None = None,
    *,
    folds: Iterable[int] | None = None,
    patients: Iterable[str] | None = None,
    top: int = 5,
    out: str | Path | None = None,
) -> tuple[list[Path], list[str]]:
    """Write the heatmaps and per-fold heatmaps.json of a run (module docstring); returns (the
    index files written, a line per fold skipped for having no attention.csv)."""
    run_dir = Path(run_dir)
    if top < 1:
        raise PgoError(f"--top {top}: must be an integer >= 1")
    paths, skipped = fold_attention(run_dir, folds)
    options, built_from = slide_options(run_dir)
    slides_dir = Path(slides_dir if slides_dir is not None else built_from)
    out = Path(out) if out is not None else run_dir / DEFAULT_OUT
    wanted = None if patients is None else set(patients)

    # Read and check everything before the first write.
    per_fold = {k: read_attention(p) for k, p in paths.items()}
    if wanted is not None:
        seen = {patient for slides in per_fold.values() for patient, _ in slides}
        unknown = sorted(wanted - seen)
        if unknown:
            raise PgoError(
                f"--patients {', '.join(unknown)}: in no {ATTENTION} of folds "
                f"{', '.join(map(str, paths))}"
            )
        per_fold = {
            k: {key: s for key, s in slides.items() if key[0] in wanted}
            for k, slides in per_fold.items()
        }
    files = slide_files(slides_dir)
    for k, slides in per_fold.items():
        for _, stem in slides:
            if stem not in files:
                raise PgoError(
                    f"{paths[k]}: slide {stem!r} has no file in {slides_dir} (looked for "
                    f"{stem}.<svs|tif|tiff|ndpi|mrxs|...>, stem sanitised as unit names are)"
                )

    footprints = {
        (k, key): check_tiles(files[key[1]], tiles, options, paths[k])
        for k, slides in per_fold.items()
        for key, tiles in slides.items()
    }

    # Checked: draw and write, each file atomically; the indices last.
    indices: list[tuple[Path, str]] = []
    for k, slides in per_fold.items():
        entries = []
        for (patient, stem), tiles in sorted(slides.items()):
            footprint = footprints[(k, (patient, stem))]
            rel = Path(f"fold_{k}") / patient / f"{stem}.png"
            write_bytes(out / rel, heatmap_png(files[stem], tiles, footprint))
            order = np.argsort(-np.asarray(tiles.weights), kind="stable")[:top]
            entries.append(
                {
                    "patient": patient,
                    "slide": files[stem].name,
                    "png": str(rel),
                    "n_tiles": len(tiles.units),
                    "footprint": footprint,
                    "top": [
                        {
                            "unit": tiles.units[i],
                            "x0": tiles.x0[i],
                            "y0": tiles.y0[i],
                            "attention": tiles.weights[i],
                        }
                        for i in order
                    ],
                }
            )
            log.info("fold %d: %s %s, %d tiles", k, patient, stem, len(tiles.units))
        index = {
            "fold": k,
            "attention": str(paths[k]),
            "slides_dir": str(slides_dir),
            "normalisation": NORMALISATION,
            "colormap": COLORMAP,
            "alpha": ALPHA,
            "slides": entries,
        }
        indices.append((out / f"fold_{k}" / INDEX, json.dumps(index, indent=2) + "\n"))
    for path, text in indices:
        write_text(path, text)
    return [p for p, _ in indices], skipped
