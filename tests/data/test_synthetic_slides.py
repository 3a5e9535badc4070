"""The synthetic slide generator (hpc_pgo.data.synthetic_slides): files OpenSlide reads with its
Aperio driver, JPEG tiles as scanners write them, tissue where the generator says, and a cohort
spec that `pgo-shards build` turns into a slide shard set."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from hpc_pgo.data import synthetic_slides
from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.slides import tissue_mask

W, H = 2304, 1792  # 9 x 7 tiles of 256 px


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "syn"
    spec = synthetic_slides.write_cohort(
        out, slides=3, width=W, height=H, patients=2, seed=3, quality=80
    )
    return out, spec


def test_slides_are_aperio_pyramids_of_jpeg_tiles(cohort):
    out, _ = cohort
    paths = sorted((out / "slides").iterdir())
    # 3 slides of 2 patients: the first patient has two
    assert [p.name for p in paths] == ["SYN-0000-S1.svs", "SYN-0000-S2.svs", "SYN-0001-S1.svs"]
    assert not list((out / "slides").glob(".*"))  # no temporary file left
    for path in paths:
        assert openslide.OpenSlide.detect_format(path) == "aperio"
        slide = openslide.OpenSlide(path)
        assert slide.dimensions == (W, H)
        assert slide.level_downsamples == (1.0, 4.0)
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.5
        slide.close()
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
                assert page.compression == tifffile.COMPRESSION.JPEG


def test_tissue_is_where_the_field_says_and_slides_differ(cohort):
    out, _ = cohort
    fractions, pixels = [], []
    for path in sorted((out / "slides").iterdir()):
        slide = openslide.OpenSlide(path)
        level0 = np.asarray(slide.read_region((0, 0), 0, (W, H)).convert("RGB"))
        slide.close()
        # the generator's own tissue decision, from the same seed
        # slide k belongs to patient k % 2: slides 0 and 2 are SYN-0000's, slide 1 SYN-0001's
        k = {"SYN-0000-S1.svs": 0, "SYN-0001-S1.svs": 1, "SYN-0000-S2.svs": 2}[path.name]
        rng = np.random.default_rng(3 * 100_003 + k)
        field = synthetic_slides.tissue_field(rng, W, H)
        truth = synthetic_slides._field_block(field, 0, 0, max(W, H), 1)[:H, :W] > 0
        found = tissue_mask(Image.fromarray(level0))
        assert (found == truth).mean() > 0.97  # JPEG noise at the borders only
        assert 0.2 < truth.mean() < 0.7
        fractions.append(truth.mean())
        pixels.append(level0)
    assert not np.array_equal(pixels[0], pixels[1])  # each slide its own seed


def test_the_cohort_spec_builds_a_slide_shard_set(cohort, tmp_path):
    out, spec = cohort
    assert spec["images"]["kind"] == "slides"
    manifest = build_cohort(out / "cohort.yaml", tmp_path / "shards", workers=2, progress=False)
    assert manifest["counts"]["patients"] == 2
    assert manifest["image"]["format"] == "png"
    units = manifest["counts"]["units"]
    # every tile with >= 50% tissue of 3 slides of 63 tiles: about 45% of them
    assert 0.2 * 3 * 63 < units < 0.8 * 3 * 63
    written = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert written["counts"] == manifest["counts"]


def test_bad_arguments_are_one_error_line(tmp_path, capsys):
    assert synthetic_slides.main(["--out", str(tmp_path / "x"), "--slides", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: synthetic slides: need --slides >= 1") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    too_many = ["--out", str(tmp_path / "y"), "--slides", "2", "--patients", "3"]
    assert synthetic_slides.main(too_many) == 2
    assert "--patients 3 must be in 1..2" in capsys.readouterr().err
