"""The demo cohort simulator: determinism, file contents, the intended signal, and its build."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from lifelines import CoxPHFitter, WeibullAFTFitter
from lifelines.utils import concordance_index
from PIL import Image
from scipy import ndimage

from hpc_pgo.data.demo import demo_spec, write_demo_cohort
from hpc_pgo.errors import PgoError

SMALL = {
    "n_patients": 24,
    "rois_per_patient": 2,
    "image_size": 48,
    "n_cnv": 8,
    "n_mut": 5,
    "n_rna": 12,
}
# Large enough that held-out C-indices are measured to about +-0.03 (200 test patients).
SIGNAL = {"n_patients": 400, "rois_per_patient": 1, "image_size": 64}


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    write_demo_cohort(tmp_path / "a", **SMALL, seed=3)
    write_demo_cohort(tmp_path / "b", **SMALL, seed=3)
    write_demo_cohort(tmp_path / "c", **SMALL, seed=4)
    a, b, c = files_of(tmp_path / "a"), files_of(tmp_path / "b"), files_of(tmp_path / "c")
    assert len(a) == 4 + 24 * 2 and a == b  # 3 tables, cohort.yaml, 48 ROIs
    assert a.keys() == c.keys()
    assert all(
        a[name] != c[name]
        for name in ("clinical.csv", "omics.csv", "truth.csv", "rois/DEMO-0001_0.png")
    )


def test_image_options_leave_tables_unchanged(tmp_path):
    write_demo_cohort(tmp_path / "a", **SMALL)
    write_demo_cohort(tmp_path / "b", **{**SMALL, "image_size": 64, "rois_per_patient": 3})
    for name in ("clinical.csv", "omics.csv", "truth.csv", "cohort.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a/rois/DEMO-0001_0.png").read_bytes() != (
        tmp_path / "b/rois/DEMO-0001_0.png"
    ).read_bytes()


def test_files_have_the_documented_shapes_and_ranges(tmp_path):
    spec_path = write_demo_cohort(tmp_path, **SMALL)
    assert spec_path == tmp_path / "cohort.yaml"
    clinical = pd.read_csv(tmp_path / "clinical.csv")
    omics = pd.read_csv(tmp_path / "omics.csv")
    truth = pd.read_csv(tmp_path / "truth.csv")
    patients = [f"DEMO-{i:04d}" for i in range(1, 25)]

    assert list(clinical.columns) == ["patient", "time", "event"]
    assert clinical.patient.tolist() == patients == omics.patient.tolist() == truth.patient.tolist()
    assert (clinical.time > 0).all() and set(clinical.event) <= {0, 1}
    assert list(omics.columns[1:]) == (
        [f"G{j:04d}_cnv" for j in range(1, 9)]
        + [f"G{j:04d}_mut" for j in range(1, 6)]
        + [f"G{j:04d}_rnaseq" for j in range(1, 13)]
    )
    cnv, mut, rna = (omics.filter(regex=f"_{s}$") for s in ("cnv", "mut", "rnaseq"))
    assert set(np.unique(cnv)) <= {-2, -1, 0, 1, 2} and len(np.unique(cnv)) >= 3
    assert set(np.unique(mut)) == {0, 1}
    assert (rna.to_numpy() > 0).all() and rna.to_numpy().std() > 0

    np.testing.assert_allclose(truth.theta, truth.theta_omics + truth.theta_image, atol=2e-6)
    np.testing.assert_allclose(
        clinical.time, np.minimum(truth.event_time, truth.censor_time), atol=1e-4
    )
    assert (clinical.event == (truth.event_time <= truth.censor_time)).all()

    spec = yaml.safe_load(spec_path.read_text())
    assert spec == demo_spec(seed=0)
    regex = re.compile(spec["images"]["patient_regex"])
    rois = sorted((tmp_path / spec["images"]["dir"]).iterdir())
    assert [p.name for p in rois] == [f"{p}_{k}.png" for p in patients for k in range(2)]
    for path in rois:
        assert regex.search(path.name)["patient"] in patients
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (48, 48)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_censoring_fraction_is_as_asked(tmp_path):
    write_demo_cohort(tmp_path / "default", image_size=16, rois_per_patient=1)
    censored = 1 - pd.read_csv(tmp_path / "default/clinical.csv").event.mean()
    assert censored == pytest.approx(round(0.35 * 150) / 150)
    write_demo_cohort(tmp_path / "none", **SMALL, censoring=0.0)
    assert pd.read_csv(tmp_path / "none/clinical.csv").event.all()


def test_rerun_removes_stale_demo_rois_only(tmp_path):
    write_demo_cohort(tmp_path, **{**SMALL, "rois_per_patient": 3})
    (tmp_path / "rois/notes.png").write_bytes(b"not ours")
    write_demo_cohort(tmp_path, **SMALL)
    names = {p.name for p in (tmp_path / "rois").iterdir()}
    assert "DEMO-0001_2.png" not in names and "DEMO-0001_1.png" in names and "notes.png" in names


@pytest.mark.parametrize(
    "option",
    [
        {"n_patients": 3},
        {"rois_per_patient": 0},
        {"image_size": 8},
        {"n_rna": 0},
        {"censoring": 1.0},
        {"weibull_shape": 0.0},
        {"image_strength": float("nan")},
        {"seed": -1},
        {"n_patients": 20.5},
    ],
)
def test_bad_options_raise_pgoerror_naming_them(tmp_path, option):
    (name,) = option
    with pytest.raises(PgoError, match=f"option {name}=") as err:
        write_demo_cohort(tmp_path / "out", **option)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the signal, measured


def image_statistics(path: Path) -> tuple[float, float]:
    """(purple-pixel fraction, mean nucleus area in px) of a decoded ROI.

    Nuclei are the pixels whose green channel is below 120 (stroma sits near 178, nuclei near
    46); a nucleus is a connected component of them.
    """
    with Image.open(path) as image:
        green = np.asarray(image.convert("RGB"))[..., 1]
    nuclear = green < 120
    labels, count = ndimage.label(nuclear)
    areas = np.bincount(labels.ravel())[1:]
    return float(nuclear.mean()), float(areas.mean()) if count else 0.0


def held_out_cindex(features: pd.DataFrame, clinical: pd.DataFrame, train: pd.Index) -> float:
    """Harrell's C on the patients outside `train` of a penalised Cox model fit on `train`."""
    frame = features.join(clinical.set_index("patient")[["time", "event"]])
    model = CoxPHFitter(penalizer=0.1).fit(frame.loc[train], "time", "event")
    test = frame.drop(index=train)
    return concordance_index(test.time, -model.predict_partial_hazard(test), test.event)


def measured_signal(directory: Path) -> tuple[float, float]:
    """(omics C, image C) on a 50/50 patient split: Cox on the top 4 principal components of
    log RNA, and Cox on the per-patient mean purple fraction and nucleus area of the PNGs."""
    clinical = pd.read_csv(directory / "clinical.csv")
    omics = pd.read_csv(directory / "omics.csv", index_col="patient")
    rng = np.random.default_rng(123)
    train = pd.Index(rng.choice(clinical.patient, len(clinical) // 2, replace=False))

    log_rna = np.log1p(omics.filter(regex="_rnaseq$"))
    log_rna = (log_rna - log_rna.loc[train].mean()) / log_rna.loc[train].std()
    components = np.linalg.svd(log_rna.loc[train].to_numpy(), full_matrices=False)[2][:4]
    pcs = pd.DataFrame(log_rna.to_numpy() @ components.T, index=omics.index).add_prefix("pc")

    rows = [
        (p.name.split("_")[0], *image_statistics(p))
        for p in sorted((directory / "rois").glob("*.png"))
    ]
    images = (
        pd.DataFrame(rows, columns=["patient", "purple", "nucleus_area"]).groupby("patient").mean()
    )
    return held_out_cindex(pcs, clinical, train), held_out_cindex(images, clinical, train)


@pytest.mark.slow
def test_both_modalities_carry_signal_the_genomic_one_more(tmp_path):
    write_demo_cohort(tmp_path, **SIGNAL)
    omics_c, image_c = measured_signal(tmp_path)
    assert omics_c > 0.65
    assert image_c > 0.55
    assert omics_c > image_c + 0.05


@pytest.mark.slow
def test_image_signal_vanishes_with_image_strength_zero(tmp_path):
    write_demo_cohort(tmp_path, **SIGNAL, image_strength=0.0)
    omics_c, image_c = measured_signal(tmp_path)
    assert omics_c > 0.65
    assert abs(image_c - 0.5) < 0.05


@pytest.mark.slow
def test_truth_is_the_log_hazard_of_a_weibull_model(tmp_path):
    write_demo_cohort(tmp_path, **{**SIGNAL, "image_size": 16}, weibull_shape=1.5)
    truth = pd.read_csv(tmp_path / "truth.csv")
    clinical = pd.read_csv(tmp_path / "clinical.csv")
    frame = pd.DataFrame({"theta": truth.theta, "time": clinical.time, "event": clinical.event})
    cox = CoxPHFitter().fit(frame, "time", "event")
    assert cox.params_["theta"] == pytest.approx(1.0, abs=0.2)  # theta is the log hazard ratio
    # lifelines' Weibull AFT: S(t) = exp(-(t / lambda)^rho), lambda = exp(b0 + b theta), rho =
    # exp(c0); the simulator's lambda = 60 exp(-theta / k), rho = k: b = -1/k, b0 = log 60.
    aft = WeibullAFTFitter().fit(frame, "time", "event")
    assert np.exp(aft.params_[("rho_", "Intercept")]) == pytest.approx(1.5, abs=0.2)
    assert np.exp(aft.params_[("lambda_", "Intercept")]) == pytest.approx(60, rel=0.2)
    assert aft.params_[("lambda_", "theta")] == pytest.approx(-1 / 1.5, abs=0.1)


# ------------------------------------------------------------------ into shards


def test_demo_cohort_builds_into_shards(tmp_path):
    from hpc_pgo.data.build import build_cohort

    options = {**SMALL, "n_patients": 30}
    spec_path = write_demo_cohort(tmp_path / "cohort", **options)
    manifest = build_cohort(spec_path, tmp_path / "shards", workers=1, progress=False)

    clinical = pd.read_csv(tmp_path / "cohort/clinical.csv")
    omics = pd.read_csv(tmp_path / "cohort/omics.csv", index_col="patient")
    assert manifest["cohort"] == "demo"
    assert manifest["counts"] == {"patients": 30, "units": 60, "events": int(clinical.event.sum())}
    assert manifest["dropped"] == []
    assert [len(manifest["groups"][g]) for g in ("cnv", "mut", "rna")] == [8, 5, 12]
    assert manifest["genes"]["rna"] == [f"G{j:04d}" for j in range(1, 13)]
    assert manifest["image"]["size"] == [48, 48]
    folds = manifest["splits"]["folds"]
    assert len(folds) == 15 and all(len(f["test"]) == 6 and len(f["train"]) == 24 for f in folds)
    assert sum(s["samples"] for s in manifest["shards"]) == 60

    # The first sample carries the first ROI's own bytes and the patient's omics row.
    with tarfile.open(tmp_path / "shards" / manifest["shards"][0]["name"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = "DEMO-0001__DEMO-0001_0"
    assert members[f"{key}.png"] == (tmp_path / "cohort/rois/DEMO-0001_0.png").read_bytes()
    rna = np.load(io.BytesIO(members[f"{key}.rna.npy"]), allow_pickle=False)
    np.testing.assert_allclose(
        rna, omics.loc["DEMO-0001"].filter(regex="_rnaseq$").to_numpy(), rtol=1e-6
    )
    surv = json.loads(members[f"{key}.surv.json"])
    assert surv["event"] == clinical.event[0] and surv["time"] == pytest.approx(clinical.time[0])


# ------------------------------------------------------------------ the knobs of `make demo`

# The options `make demo` passes to `pgo-shards demo` (Makefile, configs/README.md "The demo
# preset"), chosen on development seeds, never on the demo cohort's own test folds.
MAKE_DEMO = {
    "n_patients": 200,
    "rois_per_patient": 1,
    "genomic_strength": 1.5,
    "genomic_saturation": 1.0,
    "image_strength": 0.8,
}


def files_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for name, data in files_of(directory).items():
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


def test_previous_cohort_is_reproduced_byte_for_byte(tmp_path):
    # sha256 of the files the simulator wrote before genomic_saturation and image_contrast
    # existed (commit 1449637), for SMALL with seed 5: the defaults keep their meaning.
    before = "901561422ff1f9fcf3eec715f62ba9e160030c14eb011e8026521fa72cbb3eb0"
    write_demo_cohort(tmp_path / "default", **SMALL, seed=5)
    write_demo_cohort(
        tmp_path / "explicit", **SMALL, seed=5, genomic_saturation=None, image_contrast=1.0
    )
    assert files_digest(tmp_path / "default") == before
    assert files_digest(tmp_path / "explicit") == before


def test_genomic_saturation_is_the_documented_tanh(tmp_path):
    write_demo_cohort(tmp_path / "linear", **SMALL, genomic_strength=1.5)
    write_demo_cohort(tmp_path / "sat", **SMALL, genomic_strength=1.5, genomic_saturation=0.5)
    linear = pd.read_csv(tmp_path / "linear/truth.csv")
    sat = pd.read_csv(tmp_path / "sat/truth.csv")
    np.testing.assert_allclose(linear.theta_omics, 1.5 * linear.omics_score, atol=2e-6)
    np.testing.assert_allclose(
        sat.theta_omics, 1.5 * 0.5 * np.tanh(sat.omics_score / 0.5), atol=2e-6
    )
    assert (sat.theta_omics.abs() <= 0.75 + 1e-6).all() and sat.theta_omics.abs().max() > 0.6
    np.testing.assert_allclose(sat.theta, sat.theta_omics + sat.theta_image, atol=2e-6)
    # Only the omics part of the hazard changes: latents, omics table and ROIs are the same.
    assert (tmp_path / "linear/omics.csv").read_bytes() == (tmp_path / "sat/omics.csv").read_bytes()
    assert files_of(tmp_path / "linear/rois") == files_of(tmp_path / "sat/rois")


def test_image_contrast_scales_the_image_signal(tmp_path):
    options = {"n_patients": 60, "rois_per_patient": 1, "image_size": 64, "n_cnv": 4}
    spearman = {}
    for contrast in (0.0, 1.0, 2.0):
        write_demo_cohort(tmp_path / str(contrast), **options, image_contrast=contrast)
        truth = pd.read_csv(tmp_path / str(contrast) / "truth.csv")
        purple = [
            image_statistics(tmp_path / str(contrast) / "rois" / f"{p}_0.png")[0]
            for p in truth.patient
        ]
        spearman[contrast] = pd.Series(purple).corr(truth.image_score, method="spearman")
    assert abs(spearman[0.0]) < 0.3  # no image signal at all
    assert 0.5 < spearman[1.0] < spearman[2.0]


@pytest.mark.slow
def test_make_demo_cohort_has_the_genomic_signal_the_easier_and_complementary(tmp_path):
    write_demo_cohort(tmp_path, **{**MAKE_DEMO, "n_patients": 400, "image_size": 64}, seed=7)
    omics_c, image_c = measured_signal(tmp_path)
    truth = pd.read_csv(tmp_path / "truth.csv")
    clinical = pd.read_csv(tmp_path / "clinical.csv")

    def harrell(score):
        return concordance_index(clinical.time, -score, clinical.event)

    # Both carry signal; the omics one is the stronger, the easier one for a simple model.
    assert omics_c > image_c + 0.03 and image_c > 0.6
    # Complementary: the truth with both parts ranks patients clearly better than either part.
    assert harrell(truth.theta) > max(harrell(truth.theta_omics), harrell(truth.theta_image)) + 0.04
