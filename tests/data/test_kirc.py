"""The real TCGA-KIRC release (PORPOISE layout) builds with flags only and reads back exactly,
and the shipped spec (configs/cohorts/tcga_kirc_porpoise.yaml) builds the same shard set.

Needs ../shared/data/tcga-kirc/tcga_kirc_all_clean.csv.gz beside the checkout (development
machines and CI); users get the file from the PORPOISE repository (see its README there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpc_pgo.data.cli import main
from hpc_pgo.data.shards import verify
from tests.conftest import KIRC_TABLE

from .conftest import load_npy, porpoise_flags, read_samples, tree_bytes

pytestmark = pytest.mark.usefixtures("kirc_table")
KIRC = KIRC_TABLE
SPEC = Path(__file__).resolve().parents[2] / "configs" / "cohorts" / "tcga_kirc_porpoise.yaml"


@pytest.mark.slow
def test_tcga_kirc_builds_with_flags_only(tmp_path: Path, capsys) -> None:
    out = tmp_path / "tcga_kirc"
    flags = porpoise_flags(KIRC) + ["--out", str(out), "--workers", "2"]
    assert main(["build", *flags]) == 0
    capsys.readouterr()
    table = pd.read_csv(KIRC)
    assert len(table) == 350
    patients = table.drop_duplicates("case_id").set_index("case_id").sort_index()
    manifest = json.loads((out / "manifest.json").read_text())
    groups = {
        g: [c for c in table.columns if c.endswith(f"_{s}")]
        for g, s in (("cnv", "cnv"), ("mut", "mut"), ("rna", "rnaseq"))
    }
    assert {g: len(c) for g, c in manifest["groups"].items()} == {
        "cnv": 937,
        "mut": 10,
        "rna": 1556,
    }
    assert manifest["groups"] == groups
    assert manifest["counts"] == {
        "patients": 345,
        "units": 345,
        "events": int((patients["censorship"] == 0).sum()),
    }
    assert manifest["dropped"] == []  # the 5 two-slide patients collapse: their rows agree
    samples = read_samples(out)
    assert len(samples) == 345
    expected = {g: patients[cols].to_numpy(np.float32) for g, cols in groups.items()}
    row_of = {p: i for i, p in enumerate(patients.index)}
    for sample in samples:
        surv = json.loads(sample["surv.json"])
        i = row_of[surv["patient"]]
        assert (surv["time"], surv["event"]) == (
            patients["survival_months"].iloc[i],
            1 - patients["censorship"].iloc[i],
        )
        for group in groups:
            np.testing.assert_array_equal(load_npy(sample[f"{group}.npy"]), expected[group][i])
    folds = manifest["splits"]["folds"]
    assert len(folds) == 15 and all(len(f["test"]) == 69 for f in folds)
    assert verify(out).ok


@pytest.mark.slow
def test_tcga_kirc_shipped_spec_builds_the_same_shard_set(tmp_path: Path, capsys) -> None:
    """The spec with --survival naming the downloaded file gives byte for byte the shard set of
    the flags (benchmarks/real_kirc.py's build): same spec once resolved, same manifest."""
    by_spec, by_flags = tmp_path / "spec" / "tcga_kirc", tmp_path / "flags" / "tcga_kirc"
    run = ["--no-progress", "--workers", "2"]
    argv = ["build", "--spec", str(SPEC), "--survival", str(KIRC), "--out", str(by_spec), *run]
    assert main(argv) == 0
    assert main(["build", *porpoise_flags(KIRC), "--no-images", "--out", str(by_flags), *run]) == 0
    capsys.readouterr()
    assert tree_bytes(by_spec) == tree_bytes(by_flags)
    manifest = json.loads((by_spec / "manifest.json").read_text())
    assert manifest["cohort"] == "tcga_kirc"
    assert manifest["counts"]["patients"] == 345 and len(manifest["splits"]["folds"]) == 15
