"""`pgo-shards survset` (hpc_pgo.data.survset): a SurvSet expression cohort as a shard set.

The real-data tests read the DLBCL set shipped inside the `survset` package (the [benchmarks]
extra, which `make install` installs); the others use small frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.cli import main
from hpc_pgo.data.patients import patient_vectors
from hpc_pgo.data.survset import SPLITS, write_cohort
from hpc_pgo.errors import PgoError


def _frame(n: int = 30, genes: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"pid": np.arange(n), "event": rng.integers(0, 2, n),
                          "time": rng.exponential(3.0, n)})  # fmt: skip
    for j in range(genes):
        frame[f"num_gene_{j + 1}"] = rng.normal(size=n)
    return frame


@pytest.mark.slow
def test_dlbcl_from_the_survset_package_builds_patients_events_and_genes(tmp_path: Path, capsys):
    from SurvSet.data import SurvLoader

    frame = SurvLoader().load_dataset("DLBCL")["df"]
    out = tmp_path / "survset_dlbcl"
    assert main(["survset", "--dataset", "DLBCL", "--out", str(out), "--no-progress",
                 "--workers", "1"]) == 0  # fmt: skip
    assert "240 patients, 240 units, 138 events" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*survset-cohort"))  # the tables are removed
    manifest = json.loads((out / "manifest.json").read_text())
    genes = [c for c in frame.columns if c.startswith("num_")]
    assert list(manifest["groups"]) == ["rna"]
    assert manifest["genes"]["rna"] == [c[len("num_") :] for c in genes]
    assert manifest["counts"] == {"patients": len(frame), "units": len(frame),
                                  "events": int(frame["event"].sum())}  # fmt: skip
    assert manifest["dropped"] == []
    by_patient = frame.set_index(frame["pid"].map(lambda p: f"DLBCL-{p}"))
    for patient, record in manifest["patients"].items():
        assert record["event"] == int(by_patient.at[patient, "event"])
        assert record["time"] == pytest.approx(float(by_patient.at[patient, "time"]))
    vectors = patient_vectors(out, manifest, ["rna"])
    assert vectors.patients == sorted(by_patient.index)
    expected = by_patient.loc[vectors.patients, genes].to_numpy(np.float32)
    np.testing.assert_array_equal(vectors.values["rna"], expected.astype(np.float64))
    folds = manifest["splits"]["folds"]
    assert len(folds) == SPLITS["n"] == 15
    assert {len(f["test"]) for f in folds} == {48}
    assert all(set(f["train"]).isdisjoint(f["test"]) for f in folds)


def test_write_cohort_writes_the_build_inputs_and_builds(tmp_path: Path):
    frame = _frame()
    spec = write_cohort("Toy", tmp_path / "files", frame)
    manifest = build_cohort(spec, tmp_path / "out", workers=1, progress=False)
    assert manifest["counts"]["patients"] == 30
    assert manifest["counts"]["events"] == int(frame["event"].sum())
    assert manifest["genes"]["rna"] == [f"gene_{j}" for j in range(1, 7)]
    assert manifest["cohort"] == "survset_toy"
    assert len(manifest["splits"]["folds"]) == 15


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.drop(columns="event"), r"'Toy' .*Toy\.pickle\): no column 'event'"),
        (lambda f: f.assign(time2=f["time"]), "time-varying"),
        (lambda f: f.drop(columns=[c for c in f.columns if c.startswith("num_")]), "no numeric"),
        (lambda f: f.assign(pid=[0, 0, *range(2, 30)]), r"row 1 \(pid 0\): pid repeats row 0"),
        (lambda f: f.assign(time=[1.0, -2.0, *[1.0] * 28]), r"row 1 \(pid 1\): time -2.0"),
        (lambda f: f.assign(event=[0, 2, *[0] * 28]), r"row 1 \(pid 1\): event 2"),
        (lambda f: f.assign(pid=["a.b", *range(1, 30)]), r"row 0 \(pid a\.b\): .*not a valid"),
        (
            lambda f: f.assign(num_gene_3=[*[0.0] * 7, np.nan, *[0.0] * 22]),
            r"row 7 \(pid 7\), column 'num_gene_3': nan; valid: a finite number",
        ),
    ],
)
def test_bad_frames_name_the_dataset_row_and_column(tmp_path: Path, edit, message):
    with pytest.raises(PgoError, match=message):
        write_cohort("Toy", tmp_path, edit(_frame()))
    assert not (tmp_path / "survival.csv").exists()


def test_unknown_dataset_lists_the_valid_ones(capsys):
    assert main(["survset", "--dataset", "NoSuchSet", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "not a SurvSet data set; valid:" in err and "DLBCL" in err


def test_rna_only_sweep_composes_and_its_genomic_branch_builds():
    """data=survset_dlbcl: genomic_select_rna's entries with model.genomic.groups=[] build an
    RNA-only branch; rna-none would have no input (why genomic_select_rna leaves it out)."""
    from hpc_pgo.launch.sweep import compose_sweep, load_sweep
    from hpc_pgo.models.genomic import GenomicEncoder

    args = ["data=survset_dlbcl", "model=genomic", "folds=0-14", "model.genomic.groups=[]",
            "coxph.groups=[rna]"]  # fmt: skip
    sweep = load_sweep("genomic_select_rna")
    assert [r.name for r in sweep.runs] == ["rna-snn", "rna-pca", "coxph", "selected"]
    composed = dict((run.name, cfg) for run, cfg in compose_sweep(sweep, args))
    assert list(composed["coxph"].coxph.groups) == ["rna"]
    import torch
    from omegaconf import OmegaConf

    from hpc_pgo.models.survival import resolve_model_cfg

    for name in ("rna-snn", "rna-pca"):
        model = resolve_model_cfg(OmegaConf.to_container(composed[name].model))
        encoder = GenomicEncoder(model["genomic"], {"rna": 20})
        assert encoder.fields == {"rna": "model.genomic.rna_group"}
        if name == "rna-pca":
            encoder.fit_rna_projection(torch.randn(40, 20))
        assert encoder({"rna": torch.randn(3, 20)}).shape == (3, 32)
    none = resolve_model_cfg({"modalities": ["genomic"],
                              "genomic": {"groups": [], "rna_encoder": "none"}})  # fmt: skip
    with pytest.raises(PgoError, match="has no input"):
        GenomicEncoder(none["genomic"], {"rna": 20})
