"""Synthetic whole-slide images, written as scanners write them, and a slide cohort around them.

For benchmarks and tests of slide cohorts (anyone can rebuild the same input from a seed):

    python -m hpc_pgo.data.synthetic_slides --out DIR --slides 8 [--width 8192 --height 8192]
        [--patients N] [--seed 0] [--quality 80]

writes

    DIR/slides/<patient>-S<k>.svs   pyramidal tiled TIFF, Aperio-described (OpenSlide's aperio
                                    driver reads it): 256 px JPEG tiles (YCbCr, quality --quality),
                                    level 0 at 20x (MPP 0.5), then levels at downsample 4, 16, ...
                                    down to a level under 1024 px
    DIR/survival.csv                patient, time (months), event (1 = death)
    DIR/omics.csv                   patient + 8 `g<i>_cnv` features
    DIR/cohort.yaml                 the cohort spec: images.kind slides at 20x, 256 px tiles,
                                    every tile with >= 50% tissue (max_tiles 100000), 5 random
                                    splits; `pgo-shards build --spec DIR/cohort.yaml --out SHARDS`

The picture: white glass (RGB 244) with tissue where a smooth random field (Gaussian-filtered
noise on a grid of one cell per 64 level-0 px, bilinearly upsampled) exceeds its 55th
percentile, so about 45% of a slide is tissue in a few irregular islands; tissue is pink
stroma with per-pixel grain and purple nuclei (2% of pixels), from a bank of 8 texture patches of
256 px chosen per tile, hence the JPEG and PNG sizes of real H&E tiles (PNG tiles of 100-170 KB).
Each pyramid level is drawn at its own resolution from the same field, as a scanner writes its
own pyramid. Slides are written tile by tile (tifffile from a tile iterator, JPEG by
imagecodecs): memory holds one row of tiles, whatever the slide's size.

Patients have 1 or 2 slides (--slides over --patients, default one per patient); survival times
are exponential with an event rate of 70% (no signal: the files exist to be read, not learned).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from hpc_pgo.atomic import write_text
from hpc_pgo.errors import PgoError

TILE = 256
FIELD_CELL = 64  # level-0 px per cell of the tissue field
GLASS = 244
TISSUE_QUANTILE = 0.55
MPP = 0.5  # um per level-0 px: 20x
APP_MAG = 20
LEVEL_FACTOR = 4
SMALLEST_LEVEL = 1024  # levels are added until one is under this many px on its long side


def texture_bank(rng: np.random.Generator, n: int = 8) -> np.ndarray:
    """(n, TILE, TILE, 3) uint8 H&E-like patches: pink stroma with grain, purple nuclei."""
    grain = 1 + 0.06 * rng.standard_normal((n, TILE, TILE, 1))
    stroma = np.array([226.0, 152.0, 192.0]) * grain
    nuclei = rng.random((n, TILE, TILE, 1)) < 0.02
    patch = np.where(nuclei, np.array([92.0, 52.0, 140.0]), stroma)
    return np.clip(np.rint(patch), 0, 255).astype(np.uint8)


def tissue_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(rows, cols) float field on the FIELD_CELL grid; tissue where it exceeds its quantile."""
    from scipy.ndimage import gaussian_filter

    rows, cols = -(-height // FIELD_CELL) + 1, -(-width // FIELD_CELL) + 1
    field = gaussian_filter(rng.standard_normal((rows, cols)), sigma=max(rows, cols) / 12)
    return field - np.quantile(field, TISSUE_QUANTILE)


def _field_block(field: np.ndarray, x0: float, y0: float, size: int, scale: float) -> np.ndarray:
    """(size, size) bilinear sample of the field for level pixels [x0, x0+size) x [y0, y0+size)
    of a level at `scale` level-0 px per pixel."""
    xs = (x0 + np.arange(size) + 0.5) * scale / FIELD_CELL
    ys = (y0 + np.arange(size) + 0.5) * scale / FIELD_CELL
    xi = np.clip(xs.astype(int), 0, field.shape[1] - 2)
    yi = np.clip(ys.astype(int), 0, field.shape[0] - 2)
    fx, fy = (xs - xi)[None, :], (ys - yi)[:, None]
    f00 = field[yi][:, xi]
    f01 = field[yi][:, xi + 1]
    f10 = field[yi + 1][:, xi]
    f11 = field[yi + 1][:, xi + 1]
    return (1 - fy) * ((1 - fx) * f00 + fx * f01) + fy * ((1 - fx) * f10 + fx * f11)


def level_tiles(
    field: np.ndarray, bank: np.ndarray, width: int, height: int, scale: int
) -> Iterator[np.ndarray]:
    """The TILE x TILE tiles of the level at `scale` (level-0 px per px), row-major, each
    (TILE, TILE, 3) uint8 (the right and bottom edges padded with glass)."""
    lw, lh = -(-width // scale), -(-height // scale)
    for ty in range(-(-lh // TILE)):
        for tx in range(-(-lw // TILE)):
            tissue = _field_block(field, tx * TILE, ty * TILE, TILE, scale) > 0
            patch = bank[(tx * 7 + ty * 13) % len(bank)]
            tile = np.where(tissue[..., None], patch, np.uint8(GLASS))
            edge_x, edge_y = lw - tx * TILE, lh - ty * TILE
            if edge_x < TILE:
                tile[:, edge_x:] = GLASS
            if edge_y < TILE:
                tile[edge_y:, :] = GLASS
            yield tile


def pyramid_scales(width: int, height: int) -> list[int]:
    """Downsamples of the levels: 1, 4, 16, ... until the level is under SMALLEST_LEVEL px."""
    scales = [1]
    while max(width, height) // scales[-1] >= SMALLEST_LEVEL:
        scales.append(scales[-1] * LEVEL_FACTOR)
    return scales


def write_slide(path: Path, width: int, height: int, seed: int, quality: int = 80) -> None:
    """One synthetic slide (see the module text) at `path`, written to a temporary name first."""
    import tifffile

    rng = np.random.default_rng(seed)
    field, bank = tissue_field(rng, width, height), texture_bank(rng)
    description = (
        f"Aperio Image Library v12.0.0\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) "
        f"JPEG/RGB Q={quality}|AppMag = {APP_MAG}|MPP = {MPP}"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif:
            for i, scale in enumerate(pyramid_scales(width, height)):
                lw, lh = -(-width // scale), -(-height // scale)
                tif.write(
                    level_tiles(field, bank, width, height, scale),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(TILE, TILE),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    metadata=None,
                    subfiletype=1 if i else 0,
                    description=description if i == 0 else None,
                )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_cohort(
    out: Path, slides: int, width: int, height: int, patients: int | None, seed: int, quality: int
) -> dict:
    """Slides, tables and cohort spec under `out` (module text); returns the spec written."""
    if slides < 1 or width < TILE or height < TILE:
        raise PgoError(f"synthetic slides: need --slides >= 1 and a size >= {TILE} px")
    patients = slides if patients is None else patients
    if not 1 <= patients <= slides:
        raise PgoError(f"synthetic slides: --patients {patients} must be in 1..{slides}")
    rng = np.random.default_rng(seed)
    ids = [f"SYN-{i:04d}" for i in range(patients)]
    owner = [ids[i % patients] for i in range(slides)]
    (out / "slides").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for k, patient in enumerate(owner):
        counts[patient] = counts.get(patient, 0) + 1
        path = out / "slides" / f"{patient}-S{counts[patient]}.svs"
        write_slide(path, width, height, seed=seed * 100_003 + k, quality=quality)
    survival = pd.DataFrame(
        {
            "patient": ids,
            "time": np.round(rng.exponential(40.0, patients), 3),
            "event": (rng.random(patients) < 0.7).astype(int),
        }
    )
    omics = pd.DataFrame(rng.standard_normal((patients, 8)).round(4),
                         columns=[f"g{i}_cnv" for i in range(8)])  # fmt: skip
    omics.insert(0, "patient", ids)
    write_text(out / "survival.csv", survival.to_csv(index=False))
    write_text(out / "omics.csv", omics.to_csv(index=False))
    spec = {
        "cohort": out.name or "synthetic-slides",
        "survival": {"path": "survival.csv", "patient": "patient", "time": "time",
                     "event": "event"},
        "omics": [{"path": "omics.csv", "patient": "patient",
                   "groups": {"cnv": {"suffix": "_cnv"}}}],
        "images": {"kind": "slides", "dir": "slides", "patient_regex": r"^(?P<patient>SYN-\d{4})-S",
                   "slides": {"magnification": APP_MAG, "tile_size": TILE, "max_tiles": 100000,
                              "tissue_threshold": 0.5}},
        "splits": {"kind": "random", "n": 5, "test_fraction": 0.2, "seed": seed},
    }  # fmt: skip
    write_text(out / "cohort.yaml", yaml.safe_dump(spec, sort_keys=False))
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpc_pgo.data.synthetic_slides",
        description="Write synthetic pyramidal JPEG-tiled slides and a slide cohort around them.",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--patients", type=int, default=None, help="default: one per slide")
    parser.add_argument("--width", type=int, default=8192, help="level-0 px")
    parser.add_argument("--height", type=int, default=8192, help="level-0 px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the tiles")
    args = parser.parse_args(argv)
    try:
        write_cohort(
            args.out, args.slides, args.width, args.height, args.patients, args.seed, args.quality
        )
    except PgoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.slides} slides of {args.width}x{args.height} px and cohort.yaml in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
