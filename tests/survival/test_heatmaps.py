"""Attention heatmaps (hpc_pgo.survival.heatmaps, launch/heatmaps.py) on real slides.

Real parts: synthetic pyramidal slides that OpenSlide reads (hpc_pgo.data.synthetic_slides),
shards built from them by build_cohort at 10x (footprint 512 level-0 px on the 20x scans), unit
names from the real layout (hpc_pgo.data.layouts.slides.slide_units, i.e. tile_slide), a saved
config.yaml naming the shard set. Only attention.csv is written by hand, in its real format.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import yaml
from matplotlib import colormaps
from omegaconf import OmegaConf
from PIL import Image

from hpc_pgo.config import save_config
from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.layouts.slides import slide_units
from hpc_pgo.data.synthetic_slides import write_cohort
from hpc_pgo.errors import PgoError
from hpc_pgo.survival import heatmaps
from hpc_pgo.survival.heatmaps import ALPHA, COLORMAP, LEGEND_WIDTH, THUMBNAIL_SIDE, draw_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "heatmaps.py"
FOOTPRINT = 512  # 256 px tiles at 10x on a 20x scan
HEAVY = 0.9


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """Two patients, one 2048 x 1536 slide each, built into shards at 10x; their real units."""
    root = tmp_path_factory.mktemp("heat")
    data = root / "cohort"
    write_cohort(data, slides=2, width=2048, height=1536, patients=2, seed=3, quality=80)
    spec = yaml.safe_load((data / "cohort.yaml").read_text())
    spec["images"]["slides"]["magnification"] = 10
    spec["splits"] = {"kind": "random", "n": 2, "test_fraction": 0.5, "seed": 0}
    (data / "cohort.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shards = root / "shards"
    build_cohort(data / "cohort.yaml", shards, workers=1, progress=False)
    options = {"magnification": 10, "tile_size": 256, "max_tiles": 100000, "tissue_threshold": 0.5}
    units = {}
    for path in sorted((data / "slides").glob("*.svs")):
        tiles, _ = slide_units(path, options)
        units[path] = [u.name for u in tiles]
    return {"root": root, "slides": data / "slides", "shards": shards, "units": units}


def make_run(cohort: dict, name: str, weights_by_fold: dict[int, dict[str, list[float]]]) -> Path:
    """A run directory: config.yaml naming the shard set, fold_<k>/attention.csv per fold."""
    run = cohort["root"] / name
    save_config(OmegaConf.create({"data": {"shards": str(cohort["shards"])}}), run)
    for k, per_patient in weights_by_fold.items():
        lines = ["patient,unit,attention"]
        for path, names in cohort["units"].items():
            patient = path.stem.split("-S")[0]
            if patient not in per_patient:
                continue
            for unit, w in zip(names, per_patient[patient](len(names)), strict=True):
                lines.append(f"{patient},{unit},{w!r}")
        (run / f"fold_{k}").mkdir(parents=True, exist_ok=True)
        (run / f"fold_{k}" / "attention.csv").write_text("\n".join(lines) + "\n")
    return run


def peaked(index: int):
    """Weights with HEAVY on tile `index`, the rest sharing 1 - HEAVY."""

    def weights(n: int) -> list[float]:
        w = [(1 - HEAVY) / (n - 1)] * n
        w[index] = HEAVY
        return w

    return weights


def corner(unit: str) -> tuple[int, int]:
    _, x0, y0 = heatmaps.parse_tile_unit(unit)
    return x0, y0


def centre_px(x0: int, y0: int, scale: float) -> tuple[int, int]:
    return int((x0 + FOOTPRINT / 2) * scale), int((y0 + FOOTPRINT / 2) * scale)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_heatmap_pixels_and_index(cohort):
    (slide_path, names), (other_path, other_names) = cohort["units"].items()
    assert len(names) >= 3 and len(other_names) >= 2, "the synthetic slides should have tissue"
    patient = slide_path.stem.split("-S")[0]
    other = other_path.stem.split("-S")[0]
    run = make_run(
        cohort, "run_ok", {0: {patient: peaked(1), other: peaked(0)}, 1: {patient: peaked(2)}}
    )
    indices, skipped = draw_run(run, cohort["slides"], top=2)
    assert skipped == [] and indices == [
        run / "heatmaps" / "fold_0" / "heatmaps.json",
        run / "heatmaps" / "fold_1" / "heatmaps.json",
    ]

    slide = openslide.OpenSlide(slide_path)
    thumb = np.asarray(slide.get_thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE)).convert("RGB"), float)
    width0, _ = slide.dimensions
    slide.close()
    scale = thumb.shape[1] / width0
    png_path = run / "heatmaps" / "fold_0" / patient / f"{slide_path.stem}.png"
    png = np.asarray(Image.open(png_path).convert("RGB"), float)
    assert png.shape == (thumb.shape[0], thumb.shape[1] + LEGEND_WIDTH, 3)

    cmap = colormaps[COLORMAP]
    top, bottom = np.array(cmap(1.0)[:3]) * 255, np.array(cmap(0.0)[:3]) * 255
    x, y = centre_px(*corner(names[1]), scale)  # the heavy tile: the colormap's top colour
    np.testing.assert_allclose(png[y, x], (1 - ALPHA) * thumb[y, x] + ALPHA * top, atol=1.0)
    x, y = centre_px(*corner(names[0]), scale)  # a light tile: its bottom colour
    np.testing.assert_allclose(png[y, x], (1 - ALPHA) * thumb[y, x] + ALPHA * bottom, atol=1.0)
    tiled = {corner(u) for u in names}
    free = [
        (c * FOOTPRINT, r * FOOTPRINT)
        for r in range(1536 // FOOTPRINT)
        for c in range(2048 // FOOTPRINT)
        if (c * FOOTPRINT, r * FOOTPRINT) not in tiled
    ]
    assert free, "the synthetic slide should have a tile without tissue"
    x, y = centre_px(*free[0], scale)  # no attention there: the thumbnail's own pixel
    np.testing.assert_array_equal(png[y, x], thumb[y, x])

    index = json.loads(indices[0].read_text())
    entry = next(e for e in index["slides"] if e["patient"] == patient)
    x0, y0 = corner(names[1])
    assert entry["slide"] == slide_path.name and entry["n_tiles"] == len(names)
    assert (
        entry["footprint"] == FOOTPRINT
        and entry["png"] == f"fold_0/{patient}/{slide_path.stem}.png"
    )
    assert entry["top"][0] == {"unit": names[1], "x0": x0, "y0": y0, "attention": HEAVY}
    assert len(entry["top"]) == 2
    assert "min-max" in index["normalisation"]
    # the patient of two folds is drawn per fold, each with its own weights
    again = np.asarray(
        Image.open(run / "heatmaps" / "fold_1" / patient / f"{slide_path.stem}.png").convert("RGB"),
        float,
    )
    assert not np.array_equal(again, png)
    assert not list((run / "heatmaps").rglob("*.tmp")), "temporary files left behind"


def test_bad_unit_names_file_and_line(cohort):
    (slide_path, names), _ = cohort["units"].items()
    patient = slide_path.stem.split("-S")[0]
    run = make_run(cohort, "run_bad_unit", {0: {patient: peaked(0)}})
    csv = run / "fold_0" / "attention.csv"
    lines = csv.read_text().splitlines()
    lines[2] = f"{patient},{slide_path.stem}_tile7,0.05"
    csv.write_text("\n".join(lines) + "\n")
    result = run_cli(str(run), "--slides", str(cohort["slides"]))
    assert result.returncode == 2
    assert str(csv) in result.stderr and "line 3" in result.stderr and "_tile7" in result.stderr
    assert not (run / "heatmaps").exists()


def test_off_grid_tile_names_file_and_line(cohort):
    (slide_path, names), _ = cohort["units"].items()
    patient = slide_path.stem.split("-S")[0]
    run = make_run(cohort, "run_off_grid", {0: {patient: peaked(0)}})
    csv = run / "fold_0" / "attention.csv"
    text = csv.read_text().replace(names[0], f"{slide_path.stem}_y000000_x000256")  # a 20x name
    csv.write_text(text)
    with pytest.raises(PgoError, match=r"line 2: .*x000256.*not a tile of .*512 level-0 px"):
        draw_run(run, cohort["slides"])
    assert not (run / "heatmaps").exists()


def test_missing_slide_names_stem_and_folder(cohort):
    (slide_path, _), (other_path, _) = cohort["units"].items()
    patient = slide_path.stem.split("-S")[0]
    run = make_run(cohort, "run_no_slide", {0: {patient: peaked(0)}})
    partial = cohort["root"] / "partial_slides"
    partial.mkdir(exist_ok=True)
    shutil.copy(other_path, partial / other_path.name)
    result = run_cli(str(run), "--slides", str(partial))
    assert result.returncode == 2
    assert slide_path.stem in result.stderr and str(partial) in result.stderr
    assert not (run / "heatmaps").exists()


def test_missing_attention(cohort):
    (slide_path, _), _ = cohort["units"].items()
    patient = slide_path.stem.split("-S")[0]
    none = make_run(cohort, "run_none", {})
    (none / "fold_0").mkdir()
    result = run_cli(str(none), "--slides", str(cohort["slides"]))
    assert result.returncode == 2 and "model.image.encoder=abmil" in result.stderr
    assert not (none / "heatmaps").exists()

    some = make_run(cohort, "run_some", {0: {patient: peaked(0)}})
    (some / "fold_1").mkdir()
    missing = some / "fold_1" / "attention.csv"
    with pytest.raises(PgoError, match=rf"{missing}: missing"):  # asked for: refused
        draw_run(some, cohort["slides"], folds=[0, 1])
    assert not (some / "heatmaps").exists()
    indices, skipped = draw_run(some, cohort["slides"])  # found: skipped and listed
    assert [p.parent.name for p in indices] == ["fold_0"]
    assert len(skipped) == 1 and str(missing) in skipped[0]


def test_roi_cohort_refused(cohort, tmp_path):
    manifest = json.loads((cohort["shards"] / "manifest.json").read_text())
    manifest["image"]["kind"] = "rois"
    manifest["spec"]["images"]["kind"] = "rois"
    rois = tmp_path / "roi_shards"
    rois.mkdir()
    (rois / "manifest.json").write_text(json.dumps(manifest))
    (slide_path, _), _ = cohort["units"].items()
    run = make_run(cohort, "run_rois", {0: {slide_path.stem.split("-S")[0]: peaked(0)}})
    save_config(OmegaConf.create({"data": {"shards": str(rois)}}), run)
    with pytest.raises(PgoError, match="slide cohorts only"):
        draw_run(run, cohort["slides"])


def test_repeated_tile_and_unsafe_patient_refused(tmp_path):
    csv = tmp_path / "attention.csv"
    csv.write_text("patient,unit,attention\nP1,S1_y000000_x000512,0.5\nP1,S1_y000000_x000512,0.5\n")
    with pytest.raises(PgoError, match=r"line 3: .*repeats line 2"):
        heatmaps.read_attention(csv)
    csv.write_text("patient,unit,attention\n../P1,S1_y000000_x000512,1.0\n")
    with pytest.raises(PgoError, match=r"line 2: patient '../P1' cannot name a folder"):
        heatmaps.read_attention(csv)
