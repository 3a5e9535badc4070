"""Builds of small cohorts in both real layouts, read back with webdataset and checked against
the tables and images the fixtures wrote; determinism, workers, shard limits, atomic output."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.cli import main
from hpc_pgo.data.shards import verify
from hpc_pgo.errors import PgoError

from .conftest import (
    PF_PATIENT_REGEX,
    load_npy,
    porpoise_table,
    read_samples,
    slide_pixels,
    tree_bytes,
    write_pathomic,
    write_slide,
)


def _by_patient(table: pd.DataFrame, patient: str) -> pd.DataFrame:
    return table.drop_duplicates(patient).set_index(patient)


def test_porpoise_layout_builds_from_flags(porpoise, tmp_path: Path, capsys) -> None:
    out = tmp_path / "kirc"
    assert main(["build", *porpoise.flags, "--out", str(out), "--workers", "2"]) == 0
    assert "built" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    truth = _by_patient(porpoise.table, "case_id")
    cols = {
        g: [c for c in porpoise.table.columns if c.endswith(s)]
        for g, s in (("cnv", "_cnv"), ("mut", "_mut"), ("rna", "_rnaseq"))
    }
    assert manifest["groups"] == cols
    assert manifest["genes"]["rna"] == [c[: -len("_rnaseq")] for c in cols["rna"]]
    assert manifest["image"] is None
    assert manifest["counts"] == {
        "patients": len(truth),
        "units": len(truth),
        "events": int((1 - truth["censorship"]).sum()),
    }
    samples = read_samples(out)
    assert [s["__key__"] for s in samples] == [f"{p}__{p}" for p in sorted(truth.index)]
    for sample in samples:
        surv = json.loads(sample["surv.json"])
        row = truth.loc[surv["patient"]]
        assert surv["time"] == pytest.approx(row["survival_months"])
        assert surv["event"] == 1 - row["censorship"]  # censorship flipped
        for group, names in cols.items():
            vec = load_npy(sample[f"{group}.npy"])
            assert vec.dtype == np.float32
            np.testing.assert_array_equal(vec, row[names].to_numpy(dtype=np.float32))
        assert not {"png", "jpg", "mask.json"} & set(sample)
    folds = manifest["splits"]["folds"]
    assert len(folds) == 15
    for fold in folds:
        assert not set(fold["train"]) & set(fold["test"])
        assert sorted(fold["train"] + fold["test"]) == sorted(truth.index)
    assert verify(out).ok


def test_pathomic_layout_builds_from_spec(pathomic, tmp_path: Path) -> None:
    out = tmp_path / "pf_shards"
    manifest = build_cohort(pathomic.spec_path, out, workers=2, progress=False)
    truth = _by_patient(pathomic.dataset, "TCGA ID")
    kept = sorted(p for p, files in pathomic.rois.items() if files)
    assert manifest["groups"] == {"cnv": pathomic.cnv, "mut": pathomic.mut}
    assert manifest["image"] == {"format": "png", "kind": "tiles", "size": [32, 32]}
    assert sorted(manifest["patients"]) == kept
    assert manifest["counts"]["units"] == len(kept) * 2 * 9  # 64 px ROIs -> 9 tiles of 32 at 16
    (no_images,) = set(truth.index) - set(kept)
    assert manifest["dropped"] == [
        {
            "patient": no_images,
            "unit": None,
            "reason": f"missing modality: image (no image file in {pathomic.root / 'rois'})",
        }
    ]
    samples = read_samples(out)
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(keys)
    for sample in samples:
        surv = json.loads(sample["surv.json"])
        assert sample["__key__"] == f"{surv['patient']}__{surv['unit']}"
        row = truth.loc[surv["patient"]]
        assert (surv["time"], surv["event"]) == (row["Survival months"], 1 - row["censored"])
        np.testing.assert_array_equal(
            load_npy(sample["mut.npy"]), row[pathomic.mut].to_numpy(np.float32)
        )
    # a tile is the crop of its ROI at the offsets in its name
    sample = samples[5]
    surv = json.loads(sample["surv.json"])
    roi_name, y, x = surv["unit"].rsplit("_", 2)
    (roi,) = [p for p in pathomic.rois[surv["patient"]] if p.stem.replace(".", "-") == roi_name]
    y, x = int(y[1:]), int(x[1:])
    expected = np.asarray(Image.open(roi).convert("RGB"))[y : y + 32, x : x + 32]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))), expected)
    # splits come from pnas_splits.csv, minus the dropped patient
    split_table = pathomic.splits.set_index("TCGA ID")
    for k, fold in enumerate(manifest["splits"]["folds"], start=1):
        column = split_table[f"Randomization - {k}"]
        assert fold["test"] == sorted(p for p in kept if column[p] == "Test")
        assert fold["train"] == sorted(p for p in kept if column[p] == "Train")
    assert manifest["splits"]["kind"] == "file"


def test_same_inputs_same_bytes_whatever_the_workers(pathomic, tmp_path: Path) -> None:
    serial = tmp_path / "a" / "pf"
    parallel = tmp_path / "b" / "pf"
    build_cohort(pathomic.spec_path, serial, workers=1, progress=False, shard_max_count=10)
    build_cohort(pathomic.spec_path, parallel, workers=2, progress=False, shard_max_count=10)
    first = tree_bytes(serial)
    assert len(first) > 3  # several shards, so the split points are compared as well
    assert first == tree_bytes(parallel)
    build_cohort(
        pathomic.spec_path, serial, workers=2, progress=False, shard_max_count=10, force=True
    )
    assert tree_bytes(serial) == first


def test_shard_limits_split_samples_in_order(porpoise, tmp_path: Path) -> None:
    out = tmp_path / "small_shards"
    assert (
        main(
            [
                "build",
                *porpoise.flags,
                "--out",
                str(out),
                "--shard-max-count",
                "5",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 2]
    keys = [s["__key__"] for s in read_samples(out)]
    assert keys == sorted(keys) and len(keys) == 12
    for shard in manifest["shards"]:
        assert (out / shard["name"]).stat().st_size == shard["bytes"]


def test_untiled_rois_keep_their_bytes_in_one_format(tmp_path: Path) -> None:
    """PNG files are stored as they are; in a PNG cohort a JPEG is re-encoded (one image field
    per cohort); a cohort of JPEG files keeps the JPEG bytes."""
    cohort = write_pathomic(tmp_path / "pf", n_patients=4, rois=1, size=40)
    spec = dict(cohort.spec, images={**cohort.spec["images"], "tile": None})
    first = cohort.rois[sorted(cohort.rois)[0]][0]
    Image.open(first).save(first.with_suffix(".jpg"), quality=90)
    first.unlink()
    spec_path = cohort.root / "untiled.yaml"
    spec_path.write_text(json.dumps(spec))  # JSON is YAML
    manifest = build_cohort(spec_path, tmp_path / "mixed", workers=1, progress=False)
    assert manifest["image"] == {"format": "png", "kind": "rois", "size": [40, 40]}
    files = {p.stem.replace(".", "-"): p for p in cohort.root.glob("rois/*")}
    for sample in read_samples(tmp_path / "mixed"):
        path = files[json.loads(sample["surv.json"])["unit"]]
        assert set(sample) & {"png", "jpg"} == {"png"}
        if path.suffix == ".png":
            assert sample["png"] == path.read_bytes()
        else:  # the decoded JPEG pixels, losslessly as PNG
            np.testing.assert_array_equal(
                np.asarray(Image.open(io.BytesIO(sample["png"]))), np.asarray(Image.open(path))
            )
    for path in files.values():
        if path.suffix == ".png":
            Image.open(path).save(path.with_suffix(".jpeg"), quality=90)
            path.unlink()
    manifest = build_cohort(spec_path, tmp_path / "jpeg", workers=1, progress=False)
    assert manifest["image"]["format"] == "jpg"
    jpegs = {p.stem.replace(".", "-"): p.read_bytes() for p in cohort.root.glob("rois/*")}
    for sample in read_samples(tmp_path / "jpeg"):
        assert sample["jpg"] == jpegs[json.loads(sample["surv.json"])["unit"]]


def test_mask_keeps_patients_lacking_a_modality(tmp_path: Path) -> None:
    cohort = write_pathomic(tmp_path / "pf", n_patients=6, rois=1, without_images=(2,))
    no_cnv = sorted(cohort.rois)[0]
    table = cohort.dataset.copy()
    table.loc[table["TCGA ID"] == no_cnv, cohort.cnv[3]] = np.nan
    table.to_csv(cohort.root / "all_dataset.csv", index=False)
    spec = _resolve_here(dict(cohort.spec, missing="mask"), cohort.root)
    manifest = build_cohort(spec, tmp_path / "out", workers=1, progress=False)
    assert manifest["missing"] == "mask" and manifest["counts"]["patients"] == 6
    assert manifest["dropped"] == []
    masks = {}
    for sample in read_samples(tmp_path / "out"):
        surv = json.loads(sample["surv.json"])
        mask = masks[surv["patient"]] = json.loads(sample["mask.json"])
        if mask["cnv"] == 0:
            assert not load_npy(sample["cnv.npy"]).any()  # a missing group is stored as zeros
        if mask["image"] == 0:  # one sample with a black placeholder of the tile size
            assert surv["unit"] == surv["patient"]
            placeholder = np.asarray(Image.open(io.BytesIO(sample["png"])))
            assert placeholder.shape == (32, 32, 3) and not placeholder.any()
    assert [p for p, m in masks.items() if m["image"] == 0] == [
        p for p, files in cohort.rois.items() if not files
    ]
    assert [p for p, m in masks.items() if m["cnv"] == 0] == [no_cnv]
    assert verify(tmp_path / "out").ok
    # the same cohort under drop: both patients dropped, each with its reason
    kfold = {"kind": "kfold", "n": 2}  # the file's splits leave tests empty at 4 patients
    manifest = build_cohort(
        dict(spec, missing="drop", splits=kfold), tmp_path / "drop", workers=1, progress=False
    )
    reasons = {d["patient"]: d["reason"] for d in manifest["dropped"]}
    assert reasons[no_cnv] == (
        f"missing modality: cnv (1 of 60 values missing (NaN) in {cohort.root / 'all_dataset.csv'})"
    )
    assert len(reasons) == 2 and manifest["counts"]["patients"] == 4


def _resolve_here(spec: dict, root: Path) -> dict:
    """The spec with its relative paths made absolute (as load_spec does for a file)."""
    from hpc_pgo.data.cohort import resolve_spec

    return resolve_spec(spec, root)


def test_existing_output_needs_force_and_other_folders_are_never_replaced(
    porpoise, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "kirc"
    args = ["build", *porpoise.flags, "--out", str(out), "--workers", "1"]
    assert main(args) == 0
    before = tree_bytes(out)
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert tree_bytes(out) == before
    assert main([*args, "--force", "--splits", "kfold:3"]) == 0
    assert json.loads((out / "manifest.json").read_text())["splits"]["kind"] == "kfold"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kirc", "kirc_small.csv.gz"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["build", *porpoise.flags, "--out", str(precious), "--force"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_build_cohort_rejects_bad_shard_limits(porpoise, tmp_path: Path) -> None:
    spec = {
        "survival": {
            "path": str(porpoise.path),
            "patient": "case_id",
            "time": "survival_months",
            "censorship": "censorship",
        },
        "omics": [{"path": "same", "groups": {"mut": {"suffix": "_mut"}}}],
    }
    with pytest.raises(PgoError, match="shard limits"):
        build_cohort(spec, tmp_path / "x", shard_max_count=0)
    assert not (tmp_path / "x").exists()


def test_slides_become_tiles_and_a_slide_without_tissue_is_dropped(tmp_path: Path) -> None:
    table = porpoise_table(n_patients=3, n_double=0)
    table.to_csv(tmp_path / "clinical.csv", index=False)
    slide_dir = tmp_path / "slides"
    slide_dir.mkdir()
    patients = sorted(table["case_id"])
    pixels = {}
    for i, (patient, tissue) in enumerate(zip(patients, (384, 256, 0), strict=True)):
        path = slide_dir / f"{patient}-01Z-00-DX1.{i:04X}AB.tif"
        pixels[patient] = slide_pixels(512, 384, tissue, seed=i)
        write_slide(path, pixels[patient])
    spec = {
        "survival": {
            "path": str(tmp_path / "clinical.csv"),
            "patient": "case_id",
            "time": "survival_months",
            "censorship": "censorship",
        },
        "omics": [{"path": "same", "groups": {"mut": {"suffix": "_mut"}}}],
        "images": {
            "kind": "slides",
            "dir": str(slide_dir),
            "patient_regex": PF_PATIENT_REGEX,
            "slides": {
                "magnification": None,
                "tile_size": 128,
                "max_tiles": 5,
                "tissue_threshold": 0.5,
            },
        },
        "splits": {"kind": "kfold", "n": 2},
    }
    manifest = build_cohort(spec, tmp_path / "out", workers=2, progress=False)
    assert manifest["image"] == {"format": "png", "kind": "slides", "size": [128, 128]}
    # 3 x 4 tiles of 128 px; tissue covers columns 0-2 (slide 0) and 0-1 (slide 1)
    assert {p: r["units"] for p, r in manifest["patients"].items()} == {
        patients[0]: 5,
        patients[1]: 5,
    }
    (blank,) = [d for d in manifest["dropped"] if d["unit"] is not None]
    assert blank["patient"] == patients[2]
    assert blank["reason"].startswith("no image unit: slide ") and "no tile" in blank["reason"]
    for sample in read_samples(tmp_path / "out"):
        surv = json.loads(sample["surv.json"])
        assert surv["unit"].startswith(f"{surv['patient']}-01Z-00-DX1-")  # '.' became '-'
        x0 = int(re.search(r"x(\d+)", surv["unit"].rsplit("AB_", 1)[1])[1])
        y0 = int(re.search(r"y(\d+)", surv["unit"].rsplit("AB_", 1)[1])[1])
        tile = np.asarray(Image.open(io.BytesIO(sample["png"])))
        np.testing.assert_array_equal(tile, pixels[surv["patient"]][y0 : y0 + 128, x0 : x0 + 128])
        assert x0 + 128 <= (384 if surv["patient"] == patients[0] else 256)


def test_omics_from_several_tables(tmp_path: Path) -> None:
    """Survival in one CSV, CNV in a TSV keyed by another column, RNA in a gzipped CSV that
    lacks one patient: that patient is dropped, naming the table."""
    table = porpoise_table(n_patients=6, n_double=0)
    table[["case_id", "survival_months", "censorship"]].to_csv(tmp_path / "clin.csv", index=False)
    cnv_cols = [c for c in table.columns if c.endswith("_cnv")]
    rna_cols = [c for c in table.columns if c.endswith("_rnaseq")]
    table[["case_id", *cnv_cols]].rename(columns={"case_id": "sample"}).to_csv(
        tmp_path / "cnv.tsv", sep="\t", index=False
    )
    table[["case_id", *rna_cols]].iloc[1:].to_csv(tmp_path / "rna.csv.gz", index=False)
    spec_path = tmp_path / "cohort.yaml"
    spec_path.write_text(
        json.dumps(
            {
                "survival": {
                    "path": "clin.csv",
                    "patient": "case_id",
                    "time": "survival_months",
                    "censorship": "censorship",
                },
                "omics": [
                    {"path": "cnv.tsv", "patient": "sample", "groups": {"cnv": {"suffix": "_cnv"}}},
                    {"path": "rna.csv.gz", "groups": {"rna": {"suffix": "_rnaseq"}}},
                ],
                "splits": {"kind": "random", "n": 3, "test_fraction": 0.4, "seed": 1},
            }
        )
    )
    manifest = build_cohort(spec_path, tmp_path / "out", workers=1, progress=False)
    first = table["case_id"][0]
    assert manifest["dropped"] == [
        {
            "patient": first,
            "unit": None,
            "reason": f"missing modality: rna (not in omics table {tmp_path / 'rna.csv.gz'})",
        }
    ]
    assert manifest["groups"] == {"cnv": cnv_cols, "rna": rna_cols}
    truth = table.set_index("case_id")
    for sample in read_samples(tmp_path / "out"):
        patient = json.loads(sample["surv.json"])["patient"]
        np.testing.assert_array_equal(
            load_npy(sample["cnv.npy"]), truth.loc[patient, cnv_cols].to_numpy(np.float32)
        )
    assert all(len(f["test"]) == 2 for f in manifest["splits"]["folds"])


def test_a_killed_build_leaves_nothing_the_next_build_keeps(porpoise, tmp_path: Path) -> None:
    """Stages of a dead process on this host go; another host's and a live process's stay."""
    import socket
    import subprocess

    out = tmp_path / "kirc"
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    stale = [tmp_path / f".kirc.tmp-{host}-{dead.pid}", tmp_path / f".kirc.old-{host}-{dead.pid}"]
    kept = [tmp_path / f".kirc.tmp-elsewhere-{dead.pid}", tmp_path / f".kirc.tmp-{host}-1"]
    for path in stale + kept:
        path.mkdir()
        (path / "part.tar").write_bytes(b"half written")
    assert main(["build", *porpoise.flags, "--out", str(out), "--workers", "1"]) == 0
    assert verify(out).problems == []
    assert not any(path.exists() for path in stale)
    assert all((path / "part.tar").is_file() for path in kept)
