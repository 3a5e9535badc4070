"""One row per patient (hpc_pgo.data.patients, the patient table of hpc_pgo.data.sidecar).

A build writes omics.npz from each patient's units; the Standardizer, embed-rna and the CoxPH
matrix read it without indexing a shard and get exactly what the first-unit reads of a set
built before the table, and the fold loader's batches, give. A changed table is refused by its
readers and by `pgo-shards verify`, which also checks it against every unit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.demo import write_demo_cohort
from hpc_pgo.data.folds import open_fold
from hpc_pgo.data.loader import make_loader
from hpc_pgo.data.members import load_npy
from hpc_pgo.data.patients import patient_vectors
from hpc_pgo.data.shards import iter_samples, patient_of_key, read_manifest, verify, write_manifest
from hpc_pgo.data.sidecar import (
    OMICS_TABLE,
    OMICS_TABLE_KEY,
    read_patient_table,
    write_patient_table,
)
from hpc_pgo.data.standardizer import Standardizer
from hpc_pgo.data.tarindex import TAR_INDEX
from hpc_pgo.errors import PgoError
from hpc_pgo.train.coxph import patient_matrix
from tests.data.loader_fixtures import without_table

GROUPS = ["cnv", "mut", "rna"]
NO_CNV = [2, 5, 7]  # rows of omics.csv whose CNV is missing (--missing mask keeps them)


@pytest.fixture(scope="module")
def masked(tmp_path_factory) -> Path:
    """30 demo patients x 2 ROIs in shards of 9 units, three of them without CNV (mask)."""
    root = tmp_path_factory.mktemp("patients")
    spec = write_demo_cohort(
        root / "files", n_patients=30, rois_per_patient=2, image_size=16, n_cnv=4, n_mut=3,
        n_rna=5,
    )  # fmt: skip
    spec.write_text(spec.read_text().replace("missing: drop", "missing: mask"))
    omics = pd.read_csv(root / "files" / "omics.csv")
    omics.loc[NO_CNV, [c for c in omics.columns if c.endswith("_cnv")]] = np.nan
    omics.to_csv(root / "files" / "omics.csv", index=False)
    build_cohort(spec, root / "shards", workers=1, progress=False, shard_max_count=9)
    return root / "shards"


def test_the_patient_table_holds_what_each_unit_carries(masked: Path) -> None:
    manifest = read_manifest(masked)
    table = read_patient_table(masked, manifest)
    assert table.patients == tuple(sorted(manifest["patients"]))
    row_of, units = table.row_of, 0
    for entry in manifest["shards"]:
        for sample in iter_samples(masked / entry["name"]):
            row = row_of[patient_of_key(sample["__key__"], manifest["patients"])]
            mask = json.loads(sample["mask.json"])
            for group in GROUPS:
                assert np.array_equal(load_npy(sample[f"{group}.npy"]), table.values[group][row])
                assert bool(mask[group]) == table.available[group][row]
            units += 1
    assert units == manifest["counts"]["units"] == 60
    assert int((~table.available["cnv"]).sum()) == len(NO_CNV)
    assert table.available["mut"].all()


def test_patient_vectors_read_no_shard_and_equal_the_first_unit_reads(masked, tmp_path) -> None:
    old = without_table(masked, tmp_path / "old")
    TAR_INDEX.clear()
    reads = TAR_INDEX.reads
    new = patient_vectors(masked, read_manifest(masked), GROUPS)
    assert TAR_INDEX.reads == reads
    first_units = patient_vectors(old, read_manifest(old), GROUPS)
    assert TAR_INDEX.reads > reads  # the old set's patients were read from their shards
    assert new.patients == first_units.patients
    for group in GROUPS:
        assert new.values[group].dtype == np.float64
        assert np.array_equal(new.values[group], first_units.values[group])
        assert np.array_equal(new.available[group], first_units.available[group])
    some = new.patients[3:9]
    part = patient_vectors(masked, read_manifest(masked), ["mut"], some)
    assert part.patients == sorted(some)
    with pytest.raises(PgoError, match=r"patient 'nobody' is not in the manifest"):
        patient_vectors(masked, read_manifest(masked), ["mut"], ["nobody"])


def test_the_coxph_matrix_equals_the_loaders_batches(masked: Path) -> None:
    holdout = tuple(sorted(open_fold(masked, 1).train)[:4])
    data = open_fold(masked, 1, holdout)
    standardizer = Standardizer.fit(masked, data.train, GROUPS)
    for split in ("train", "val", "test"):
        TAR_INDEX.clear()
        reads = TAR_INDEX.reads
        x, frame = patient_matrix(masked, 1, split, GROUPS, standardizer, holdout)
        assert TAR_INDEX.reads == reads
        loader = make_loader(
            masked, 1, split, batch_size=data.units(split), groups=GROUPS, image_size=None,
            standardizer=standardizer, shuffle_buffer=1, holdout=holdout,
        )  # fmt: skip
        (batch,) = list(loader)
        first = {}
        for i, patient in enumerate(batch["patient"]):
            first.setdefault(patient, i)
        rows = [first[p] for p in sorted(first)]
        want = np.concatenate([batch[g].numpy()[rows] for g in GROUPS], axis=1)
        assert frame["patient"].tolist() == sorted(first) == sorted(data.patients(split))
        assert np.array_equal(x, want.astype(np.float64))
        assert np.array_equal(frame["time"].to_numpy(), batch["time"].numpy()[rows].astype(float))
        assert np.array_equal(frame["event"].to_numpy(), batch["event"].numpy()[rows].astype(int))


def test_a_changed_table_is_refused_and_verify_checks_it_against_the_units(
    masked: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(masked, tmp_path / "copy"))
    manifest = read_manifest(copy)
    table = read_patient_table(copy, manifest)
    values = {g: v.copy() for g, v in table.values.items()}
    values["mut"][4, 1] += 1.0
    available = dict(table.available)
    # replaced behind the manifest's back: its readers and verify refuse it by its sha256
    record = write_patient_table(copy, list(table.patients), values, available)
    train = open_fold(copy, 0).train
    with pytest.raises(PgoError, match=r"omics\.npz: differs from the sha256 in manifest\.json"):
        Standardizer.fit(copy, train, GROUPS)
    assert any(OMICS_TABLE in p and "sha256" in p for p in verify(copy).problems)
    # recorded in a resealed manifest: it reads, and verify finds the unit it disagrees with
    manifest[OMICS_TABLE_KEY] = record
    write_manifest(copy, manifest)
    patient = table.patients[4]
    problems = verify(copy).problems
    assert problems and all(f"mut.npy differs from its patient's row of {OMICS_TABLE}" in p
                            for p in problems)  # fmt: skip
    assert all(f"sample {patient}__" in p for p in problems)


def test_verify_notes_a_set_built_before_the_table(masked: Path, tmp_path: Path) -> None:
    report = verify(without_table(masked, tmp_path / "old"))
    assert report.ok
    assert any(OMICS_TABLE in note for note in report.notes)
    assert verify(masked).ok and not any(OMICS_TABLE in n for n in verify(masked).notes)
