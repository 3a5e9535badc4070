"""Image layouts (hpc_pgo.data.layouts): every registered layout implements the interface, and
the registry alone drives the spec's validation, the build and `--image-kind`: a layout
registered here (a toy `dots` kind) is validated, built and chosen like rois and slides."""

from __future__ import annotations

import inspect
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hpc_pgo.data import layouts
from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.cli import main
from hpc_pgo.data.cohort import resolve_spec
from hpc_pgo.data.images import Unit, encode_png, unit_name
from hpc_pgo.data.layouts import LAYOUTS, Layout, get_layout, layout_of
from hpc_pgo.data.layouts.base import set_given
from hpc_pgo.data.layouts.checks import check_keys, integer, mapping
from hpc_pgo.errors import PgoError

from .conftest import read_samples

SURVIVAL = {"path": "s.csv", "patient": "patient", "time": "time", "event": "event"}
INTERFACE = (
    "resolve_section",
    "apply_flags",
    "skip_reason",
    "skipped_entries",
    "find_files",
    "image_format",
    "manifest_kind",
    "unit_size",
    "file_units",
)


class DotsLayout(Layout):
    """A toy layout: a `.dots` file holds 'r g b'; its one unit is a square of that colour."""

    kind = "dots"
    section = "dots"
    suffixes = (".dots",)

    def resolve_section(self, images: Mapping) -> dict:
        dots = mapping(images.get("dots") or {}, "images.dots")
        check_keys(dots, ("size",), "images.dots")
        return {"size": integer(dots.get("size", 8), "images.dots.size", 1)}

    def apply_flags(self, images: dict, flags: Mapping[str, Any]) -> None:
        dots = dict(images.get("dots") or {})
        set_given(dots, "size", flags.get("tile_size"))
        images["dots"] = dots

    def manifest_kind(self, images: Mapping) -> str:
        return "dots"

    def unit_size(self, images: Mapping, first_file: Path) -> tuple[int, int]:
        return images["dots"]["size"], images["dots"]["size"]

    def file_units(self, path: Path, images: Mapping, fmt: str) -> tuple[list[Unit], str | None]:
        size = images["dots"]["size"]
        rgb = tuple(int(v) for v in path.read_text().split())
        image = Image.new("RGB", (size, size), rgb)
        return [Unit(unit_name(path.stem), "png", encode_png(image), (size, size))], None


@pytest.fixture
def dots(monkeypatch) -> DotsLayout:
    """The toy layout, registered for one test."""
    layout = DotsLayout()
    monkeypatch.setitem(LAYOUTS, "dots", layout)
    return layout


def _spec(images: dict) -> dict:
    return {"survival": SURVIVAL, "images": {"dir": "img", **images}}


# --------------------------------------------------------------------------- the interface


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_each_layout_implements_the_interface(kind: str, tmp_path: Path) -> None:
    layout = LAYOUTS[kind]
    assert isinstance(layout, Layout) and not inspect.isabstract(type(layout))
    assert layout.kind == kind and get_layout(kind) is layout
    for method in INTERFACE:
        assert callable(getattr(layout, method)), method
    assert layout.suffixes and all(s.startswith(".") and s == s.lower() for s in layout.suffixes)
    # its own section resolves from the spec alone; the resolved section names its layout
    images = resolve_spec(_spec({"kind": kind}), tmp_path)["images"]
    assert layout_of(images) is layout
    assert set(images) == {"kind", "dir", "patient_regex", *layouts.sections()}
    assert isinstance(layout.manifest_kind(images), str)
    assert layout.image_format(images, []) in ("png", "jpg")
    # which files are its images, by suffix; the rest is listed with why
    folder = tmp_path / "img"
    folder.mkdir()
    image = folder / f"P1_a{layout.suffixes[0]}"
    image.write_bytes(b"")
    (folder / "notes.txt").write_text("x")
    assert layout.skip_reason(image) is None
    assert layout.find_files(folder, images["patient_regex"]) == {"P1": [image]}
    ((skipped, why),) = layout.skipped_entries(folder)
    assert skipped.name == "notes.txt"
    assert why == (
        f"suffix '.txt' is not an image suffix of a {kind} cohort ({', '.join(layout.suffixes)})"
    )


def test_the_sections_of_images_are_the_layouts_own() -> None:
    assert tuple(LAYOUTS) == ("rois", "slides")
    assert layouts.sections() == ("tile", "slides")
    assert layouts.DEFAULT_KIND in LAYOUTS
    assert get_layout(["rois"]) is None and get_layout(None) is None


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ({"kind": "x"}, "images.kind: 'x' is not one of rois, slides"),
        ({"kind": ["rois"]}, "images.kind: ['rois'] is not one of rois, slides"),
        ({"kind": "rois", "slides": {}}, "images.slides: only valid with images.kind: slides"),
        (
            {"kind": "slides", "tile": {"size": 8}},
            "images.tile: only valid with images.kind: rois (slides use images.slides)",
        ),
        (
            {"kind": "rois", "tiles": 1},
            "images: unknown key 'tiles'; valid keys: kind, dir, patient_regex, tile, slides",
        ),
    ],
)
def test_spec_errors_name_the_registered_layouts(tmp_path: Path, images, message) -> None:
    with pytest.raises(PgoError) as err:
        resolve_spec(_spec(images), tmp_path)
    assert str(err.value) == message


def test_a_registered_layout_is_validated_by_the_registry(dots, tmp_path: Path) -> None:
    with pytest.raises(PgoError, match=r"^images.kind: 'x' is not one of rois, slides, dots$"):
        resolve_spec(_spec({"kind": "x"}), tmp_path)
    images = resolve_spec(_spec({"kind": "dots", "dots": {"size": 4}}), tmp_path)["images"]
    assert images["dots"] == {"size": 4} and images["tile"] is None and images["slides"] is None
    assert layout_of(images) is dots
    # its section is an `images` key, refused under another kind; its own checks run
    with pytest.raises(PgoError, match=r"^images.dots: only valid with images.kind: dots$"):
        resolve_spec(_spec({"kind": "rois", "dots": {"size": 4}}), tmp_path)
    with pytest.raises(PgoError, match=r"^images.dots: unknown key 'radius'; valid keys: size$"):
        resolve_spec(_spec({"kind": "dots", "dots": {"radius": 4}}), tmp_path)


def test_a_registered_layout_builds_and_is_a_build_flag(dots, tmp_path: Path, capsys) -> None:
    patients = [f"P{i}" for i in range(4)]
    pd.DataFrame(
        {"patient": patients, "time": [3.0, 5.0, 8.0, 13.0], "event": [1, 0, 1, 1]}
    ).to_csv(tmp_path / "s.csv", index=False)
    folder = tmp_path / "img"
    folder.mkdir()
    colours = {"P0_a": (255, 0, 0), "P0_b": (0, 255, 0), "P1_a": (0, 0, 255), "P2_a": (9, 9, 9)}
    for name, rgb in colours.items():
        (folder / f"{name}.dots").write_text(" ".join(map(str, rgb)))
    (folder / "README.md").write_text("not a dots file")
    spec = {
        "survival": {**SURVIVAL, "path": str(tmp_path / "s.csv")},
        "images": {"kind": "dots", "dir": str(folder), "dots": {"size": 6}},
        "splits": {"kind": "kfold", "n": 2},
        "missing": "mask",
    }
    manifest = build_cohort(spec, tmp_path / "out", workers=1, progress=False)
    assert manifest["image"] == {"format": "png", "kind": "dots", "size": [6, 6]}
    assert {p: r["units"] for p, r in manifest["patients"].items()} == {"P0": 2, "P1": 1, "P2": 1}
    # P3 has no image and no omics to keep it by; README.md is no dots file
    assert sorted((d["patient"] or "", d["unit"] or "") for d in manifest["dropped"]) == [
        ("", "README.md"),
        ("P3", ""),
    ]
    for sample in read_samples(tmp_path / "out"):
        unit = json.loads(sample["surv.json"])["unit"]
        pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
        assert pixels.shape == (6, 6, 3)
        assert (pixels == colours.get(unit, (0, 0, 0))).all()
    # --image-kind offers the registered kinds, and the layout takes its flags
    out = tmp_path / "flags"
    args = ["build", "--survival", str(tmp_path / "s.csv"), "--patient-col", "patient"]
    args += ["--time-col", "time", "--event-col", "event", "--images", str(folder)]
    args += ["--image-kind", "dots", "--tile-size", "3", "--splits", "kfold:2", "--out", str(out)]
    assert main([*args, "--no-progress", "--workers", "1"]) == 0
    assert json.loads((out / "manifest.json").read_text())["image"]["size"] == [3, 3]
    capsys.readouterr()


def test_image_kind_choices_are_the_registry(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--image-kind", "tiles"])
    err = capsys.readouterr().err
    assert "invalid choice: 'tiles'" in err
    # argparse quotes the choices or not, by Python version
    assert err.split("choose from", 1)[1].replace("'", "").startswith(" rois, slides)")
