"""tile_slide on real pyramidal TIFF slides written with tifffile and read through OpenSlide.

The slides: 2048 x 1536 px at level 0 with levels at downsample 2 and 4, white glass with an
H&E-like tissue region (a grid-aligned rectangle plus a disc) whose level-0 mask is known here.
Generic TIFF: OpenSlide's generic-tiff driver reads tiled pages whose later pages are marked
reduced-resolution (SubFileType 1); it exposes mpp from the TIFF resolution (centimetre unit) but
never an objective power. Aperio: an ImageDescription starting "Aperio" with AppMag and MPP makes
OpenSlide's aperio driver report openslide.objective-power.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from hpc_pgo.data.slides import choose_tiles, otsu_threshold, tile_slide
from hpc_pgo.errors import PgoError

WIDTH, HEIGHT = 2048, 1536
RECT = (512, 256, 1280, 1024)  # x0, y0, x1, y1: tissue aligned to the 256 px grid
DISC = (1600, 1150, 260)  # centre x, centre y, radius


@functools.cache
def tissue_truth() -> np.ndarray:
    """(HEIGHT, WIDTH) bool: where the test slides have tissue."""
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    x0, y0, x1, y1 = RECT
    cx, cy, r = DISC
    return ((xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)) | (
        (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    )


def slide_pixels(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: white glass, textured pink stroma with purple nuclei where mask is set.

    The texture is one random 256 x 256 patch repeated (cheap to draw, still H&E-coloured).
    """
    rng = np.random.default_rng(seed)
    grain = 1 + 0.05 * rng.standard_normal((256, 256, 1))
    patch = np.where(
        rng.random((256, 256, 1)) < 0.02, [90.0, 50.0, 140.0], [225.0, 150.0, 190.0] * grain
    )
    reps = (-(-mask.shape[0] // 256), -(-mask.shape[1] // 256), 1)
    tissue = np.tile(np.clip(np.rint(patch), 0, 255).astype(np.uint8), reps)[
        : mask.shape[0], : mask.shape[1]
    ]
    glass = np.full(3, 252, np.uint8)
    return np.where(mask[..., None], tissue, glass)


def pyramid(level0: np.ndarray) -> list[np.ndarray]:
    """Levels at downsample 1, 2, 4 (2x2 box averages)."""
    levels = [level0]
    for _ in range(2):
        a = levels[-1].astype(np.float64)
        h, w = a.shape[0] // 2, a.shape[1] // 2
        levels.append(
            np.rint(a[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean((1, 3))).astype(np.uint8)
        )
    return levels


def write_slide(path, levels, *, description: str | None = None, mpp: float | None = None) -> None:
    """A tiled (256 px) zlib pyramidal TIFF; pages after the first are reduced-resolution."""
    resolution = {}
    if mpp is not None:  # pixels per centimetre
        resolution = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level,
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 1},
                metadata=None,
                subfiletype=1 if i else 0,
                description=description if i == 0 else None,
                **(resolution if i == 0 else {}),
            )


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Paths of the test slides and the pyramid levels they hold."""
    root = tmp_path_factory.mktemp("slides")
    levels = pyramid(slide_pixels(tissue_truth()))
    paths = {
        "plain": root / "plain.tif",  # generic-tiff, no magnification metadata
        "mpp": root / "mpp.tif",  # generic-tiff, 0.25 um/px = 40x by the mpp convention
        "aperio": root / "aperio.svs",  # aperio, AppMag 20
        "blank": root / "blank.tif",
    }
    write_slide(paths["plain"], levels)
    write_slide(paths["mpp"], levels, mpp=0.25)
    aperio_20x = (
        f"Aperio Image Library v12.0.0\n{WIDTH}x{HEIGHT} (256x256) zlib|AppMag = 20|MPP = 0.5"
    )
    write_slide(paths["aperio"], levels, description=aperio_20x)
    paths["sparse"] = root / "sparse.svs"  # no level at downsample 2
    write_slide(paths["sparse"], [levels[0], levels[2]], description=aperio_20x)
    write_slide(paths["blank"], pyramid(slide_pixels(np.zeros((HEIGHT, WIDTH), bool))))
    return paths, levels


def coordinates(name: str) -> tuple[int, int]:
    """(x0, y0) level-0 px of a tile name y<y0>_x<x0>."""
    match = re.fullmatch(r"y(\d{6})_x(\d{6})", name)
    assert match, name
    return int(match[2]), int(match[1])


def truth_fraction(x0: int, y0: int, footprint: int) -> float:
    return float(tissue_truth()[y0 : y0 + footprint, x0 : x0 + footprint].mean())


def test_openslide_reads_the_test_slides_with_its_own_drivers(slides):
    paths, _ = slides
    assert int(openslide.__library_version__.split(".")[0]) >= 4
    assert openslide.OpenSlide.detect_format(paths["plain"]) == "generic-tiff"
    assert openslide.OpenSlide.detect_format(paths["aperio"]) == "aperio"
    with openslide.OpenSlide(paths["aperio"]) as slide:
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
    with openslide.OpenSlide(paths["mpp"]) as slide:
        assert openslide.PROPERTY_NAME_OBJECTIVE_POWER not in slide.properties
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)


def test_level0_tiles_are_the_scanned_pixels_and_lie_in_tissue(slides):
    paths, levels = slides
    tiles = tile_slide(paths["plain"], tile_size=256, max_tiles=64)
    names = [name for name, _ in tiles]
    # Grid order (row, then column), which is also the names' sort order.
    assert names == sorted(names, key=lambda n: coordinates(n)[::-1]) == sorted(names)
    for name, tile in tiles:
        x0, y0 = coordinates(name)
        assert x0 % 256 == 0 and y0 % 256 == 0
        assert tile.mode == "RGB" and tile.size == (256, 256)
        np.testing.assert_array_equal(np.asarray(tile), levels[0][y0 : y0 + 256, x0 : x0 + 256])
        assert truth_fraction(x0, y0, 256) >= 0.4, name
    # Every tile that is clearly mostly tissue is kept (64 is more than there are).
    expected = {
        (x, y)
        for y in range(0, HEIGHT - 255, 256)
        for x in range(0, WIDTH - 255, 256)
        if truth_fraction(x, y, 256) >= 0.6
    }
    assert expected <= {coordinates(n) for n in names}
    assert len(tiles) <= len(expected) + 4


def test_max_tiles_keeps_the_most_tissue_deterministically(slides):
    paths, _ = slides
    first = tile_slide(paths["plain"], max_tiles=4)
    again = tile_slide(paths["plain"], max_tiles=4)
    assert len(first) == 4
    assert [n for n, _ in first] == [n for n, _ in again]
    assert all(a.tobytes() == b.tobytes() for (_, a), (_, b) in zip(first, again, strict=True))
    # 9 rectangle tiles and 1 disc tile are all tissue; 4 of them are taken.
    assert all(truth_fraction(*coordinates(n), 256) == 1.0 for n, _ in first)
    assert {n for n, _ in first} <= {n for n, _ in tile_slide(paths["plain"], max_tiles=64)}


def test_tile_size_and_threshold(slides):
    paths, _ = slides
    small = tile_slide(paths["plain"], tile_size=128, max_tiles=500, tissue_threshold=0.9)
    assert {t.size for _, t in small} == {(128, 128)}
    assert all(truth_fraction(*coordinates(n), 128) >= 0.75 for n, _ in small)
    loose = tile_slide(paths["plain"], tile_size=128, max_tiles=500, tissue_threshold=0.1)
    assert len(loose) > len(small)


def test_magnification_from_objective_power_reads_the_matching_level(slides):
    paths, levels = slides
    # Aperio slide scanned at 20x: 10x is level 1 (downsample 2), each tile 512 level-0 px.
    for name, tile in tile_slide(paths["aperio"], magnification=10, max_tiles=8):
        x0, y0 = coordinates(name)
        assert x0 % 512 == 0 and y0 % 512 == 0
        np.testing.assert_array_equal(
            np.asarray(tile), levels[1][y0 // 2 : y0 // 2 + 256, x0 // 2 : x0 // 2 + 256]
        )
    # 7.5x lies between levels: read from level 1 (2x) and resized, 683 level-0 px a tile.
    tiles = tile_slide(paths["aperio"], magnification=7.5, tile_size=256, max_tiles=8)
    assert tiles and {t.size for _, t in tiles} == {(256, 256)}
    for name, tile in tiles:
        x0, y0 = coordinates(name)
        assert x0 % 683 == 0 and y0 % 683 == 0
        source = levels[0][y0 : y0 + 683, x0 : x0 + 683].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(np.asarray(tile).reshape(-1, 3).mean(0), source, atol=3)


def test_magnification_between_levels_is_a_box_average_of_the_finer_level(slides):
    paths, levels = slides
    # No level at downsample 2: 10x reads 512 px of level 0 and halves it, which is what the
    # test's own level 1 holds (2 x 2 box means), up to rounding.
    tiles = tile_slide(paths["sparse"], magnification=10, max_tiles=4)
    assert len(tiles) >= 3
    for name, tile in tiles:
        x0, y0 = coordinates(name)
        expected = levels[1][y0 // 2 : y0 // 2 + 256, x0 // 2 : x0 // 2 + 256].astype(int)
        assert np.abs(np.asarray(tile, dtype=int) - expected).max() <= 1


def test_magnification_from_mpp_when_objective_power_is_absent(slides):
    paths, levels = slides
    # 0.25 um/px is 40x: 20x is level 1 (downsample 2), 512 level-0 px a tile.
    tiles = tile_slide(paths["mpp"], magnification=20, max_tiles=3)
    assert len(tiles) == 3
    for name, tile in tiles:
        x0, y0 = coordinates(name)
        assert x0 % 512 == 0 and y0 % 512 == 0
        np.testing.assert_array_equal(
            np.asarray(tile), levels[1][y0 // 2 : y0 // 2 + 256, x0 // 2 : x0 // 2 + 256]
        )
    # 10x is level 2 (downsample 4): the 1024 px tile (0, 0) holds 37.5% tissue, so a threshold
    # of 0.3 keeps it and one of 0.5 does not.
    assert [n for n, _ in tile_slide(paths["mpp"], magnification=10, tissue_threshold=0.3)][:1] == [
        "y000000_x000000"
    ]
    assert tile_slide(paths["mpp"], magnification=10, tissue_threshold=0.5) == []


def test_magnification_beyond_the_scan_is_refused(slides):
    paths, _ = slides
    with pytest.raises(PgoError, match=r"magnification 40 exceeds the scan's 20x") as err:
        tile_slide(paths["aperio"], magnification=40)
    assert str(paths["aperio"]) in str(err.value)


def test_magnification_without_metadata_is_refused_but_level0_works(slides):
    paths, _ = slides
    with pytest.raises(PgoError, match="objective-power") as err:
        tile_slide(paths["plain"], magnification=20)
    assert str(paths["plain"]) in str(err.value) and "\n" not in str(err.value)
    assert tile_slide(paths["plain"], magnification=None, max_tiles=1)


def test_blank_slide_gives_no_tiles(slides):
    paths, _ = slides
    assert tile_slide(paths["blank"]) == []


def corrupt_tile_data(source, target) -> None:
    """Copy source to target with the compressed data of every tile overwritten by noise."""
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(0)
    with tifffile.TiffFile(source) as tif:
        for page in tif.pages:
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                data[offset + 2 : offset + count] = rng.integers(
                    0, 256, count - 2, dtype=np.uint8
                ).tobytes()
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["text", "png", "truncated", "corrupt_tiles", "missing"])
def test_unreadable_files_raise_pgoerror_naming_the_file(slides, tmp_path, kind):
    paths, _ = slides
    bad = tmp_path / f"{kind}.tif"
    if kind == "text":
        bad.write_text("patient,time,event\n")
    elif kind == "png":
        Image.new("RGB", (64, 64), (200, 120, 170)).save(bad, format="PNG")
    elif kind == "truncated":
        bad.write_bytes(paths["plain"].read_bytes()[:3000])
    elif kind == "corrupt_tiles":
        corrupt_tile_data(paths["plain"], bad)
        assert openslide.OpenSlide(bad).dimensions == (WIDTH, HEIGHT)  # opens; reading fails
    with pytest.raises(PgoError) as err:
        tile_slide(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "option", [{"tile_size": 0}, {"max_tiles": 0}, {"tissue_threshold": 1.5}, {"magnification": -5}]
)
def test_bad_options_raise_pgoerror(slides, option):
    paths, _ = slides
    (name,) = option
    with pytest.raises(PgoError, match=f"{name}="):
        tile_slide(paths["plain"], **option)


def test_choose_tiles_most_tissue_first_ties_by_position():
    fractions = np.array(
        [
            [0.2, 0.9, 0.7],
            [0.9, 0.5, 0.9],
            [1.0, 0.0, 0.9],
        ]
    )
    # Candidates >= 0.5 by fraction: 1.0 (2,0); 0.9 at (0,1) (1,0) (1,2) (2,2); 0.7; 0.5.
    assert choose_tiles(fractions, 0.5, 3) == [(0, 1), (1, 0), (2, 0)]
    assert choose_tiles(fractions, 0.5, 5) == [(0, 1), (1, 0), (1, 2), (2, 0), (2, 2)]
    assert choose_tiles(fractions, 0.95, 10) == [(2, 0)]
    assert choose_tiles(np.zeros((2, 2)), 0.5, 4) == []


def test_otsu_threshold_maximises_between_class_variance():
    rng = np.random.default_rng(0)
    values = (
        np.concatenate([rng.normal(15, 5, 3000), rng.normal(90, 15, 1000)])
        .clip(0, 255)
        .astype(np.uint8)
    )

    def between(t: int) -> float:  # the definition, one threshold at a time
        low, high = values[values < t].astype(float), values[values >= t].astype(float)
        if not len(low) or not len(high):
            return -1.0
        return len(low) * len(high) * (low.mean() - high.mean()) ** 2

    best = max(range(1, 256), key=lambda t: (between(t), -t))
    assert otsu_threshold(values) == best
    assert 30 < best < 70
    assert otsu_threshold(np.full(10, 7, np.uint8)) == 0  # one value: nothing to split
