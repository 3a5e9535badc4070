"""The cohort spec, table import (survival, omics) and splits, on tables written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpc_pgo.data.cohort import (
    load_omics,
    load_spec,
    load_survival,
    resolve_spec,
    select_columns,
)
from hpc_pgo.data.splits import kfold_splits, random_splits, read_split_file
from hpc_pgo.errors import PgoError

from .conftest import porpoise_table

SURVIVAL = {
    "patient": "case_id",
    "time": "survival_months",
    "event": None,
    "censorship": "censorship",
}


def _survival(path: Path, **changes) -> dict:
    return {"path": str(path), **SURVIVAL, **changes}


def test_load_spec_resolves_paths_from_its_folder_and_fills_defaults(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    spec_path = tmp_path / "sub" / "cohort.yaml"
    spec_path.write_text(
        "survival: {path: t.csv, patient: p, time: t, event: e}\n"
        "omics: [{path: same, groups: {rna: {suffix: _rnaseq}}}]\n"
        "images: {dir: rois, tile: {size: 512, stride: 256}}\n"
        "splits: {kind: kfold}\n"
    )
    spec = load_spec(spec_path)
    assert spec["survival"]["path"] == str(tmp_path / "sub" / "t.csv")
    assert spec["omics"] == [
        {
            "path": str(tmp_path / "sub" / "t.csv"),
            "patient": "p",
            "groups": {"rna": {"suffix": "_rnaseq"}},
        }
    ]
    assert spec["images"]["dir"] == str(tmp_path / "sub" / "rois")
    assert spec["images"]["tile"] == {"size": 512, "stride": 256}
    assert spec["splits"] == {
        "kind": "kfold",
        "n": 5,
        "test_fraction": None,
        "seed": 0,
        "file": None,
    }
    assert spec["missing"] == "drop" and spec["cohort"] is None
    assert resolve_spec(spec, "/elsewhere") == spec  # resolving twice changes nothing


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "survival: {path: t.csv, patient: p, time: t, event: e}\nsplit: {}\n",
            "unknown key 'split'; valid keys: cohort, survival, omics, images, splits, missing",
        ),
        (
            "survival: {path: t.csv, patient: p, time: t, event: e, censorship: c}\n",
            "give exactly one of 'event'",
        ),
        ("survival: {path: t.csv, patient: p, time: t, event: e}\n", "no modality"),
        (
            "survival: {path: t.csv, patient: p, time: t, event: e}\n"
            "omics: [{path: same, groups: {rna: {ending: x}}}]\n",
            "omics[0].groups.rna: expected exactly one selector of suffix, prefix, regex, columns",
        ),
        (
            "survival: {path: t.csv, patient: p, time: t, event: e}\nimages: {dir: r}\n"
            "missing: keep\n",
            "missing: 'keep' is not one of drop, mask",
        ),
        (
            "survival: {path: t.csv, patient: p, time: t, event: e}\n"
            "images: {dir: r, patient_regex: '^(.+)_'}\n",
            "needs a named group (?P<patient>...)",
        ),
        ("survival: [1, 2\n", "not valid YAML"),
        (
            "survival: {path: t.csv, patient: p, time: t, event: e}\n"
            "omics: [{path: same, groups: {rna: {suffix: _rnaseq}}}]\n"
            "splits: {kind: file, file: {path: s.csv, first: 2}}\n",
            "splits.file.first: 2 is not 0 or 1",
        ),
    ],
)
def test_bad_specs_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cohort.yaml"
    path.write_text(text)
    with pytest.raises(PgoError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"cohort spec {path}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_survival_flips_censorship_and_collapses_agreeing_rows(tmp_path: Path) -> None:
    table = porpoise_table(n_patients=5, n_double=2)
    path = tmp_path / "t.tsv"
    table.to_csv(path, sep="\t", index=False)  # TSV, read by its extension
    survival = load_survival(_survival(path))
    first = table.drop_duplicates("case_id").set_index("case_id").sort_index()
    assert list(survival.index) == sorted(first.index)
    np.testing.assert_array_equal(survival["time"], first["survival_months"])
    np.testing.assert_array_equal(survival["event"], 1 - first["censorship"])
    event = load_survival(_survival(path, event="censorship", censorship=None))
    np.testing.assert_array_equal(event["event"], first["censorship"])


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("survival_months", np.nan, "line 4 column 'survival_months': time nan"),
        ("survival_months", -1.0, "line 4 column 'survival_months': time -1.0"),
        ("censorship", 2, "line 4 column 'censorship': value 2 is not 0 or 1"),
        ("censorship", "yes", "line 4 column 'censorship': value 'yes' is not a number"),
        ("case_id", np.nan, "line 4: missing patient id in column 'case_id'"),
    ],
)
def test_bad_survival_values_name_line_and_column(tmp_path: Path, column, value, message) -> None:
    table = porpoise_table(n_patients=4, n_double=0)
    table[column] = table[column].astype(object)
    table.loc[2, column] = value
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    with pytest.raises(PgoError, match="^survival table .*t.csv") as err:
        load_survival(_survival(path))
    assert message in str(err.value)


def test_rows_of_one_patient_that_disagree_are_an_error(tmp_path: Path) -> None:
    table = porpoise_table(n_patients=4, n_double=1)
    table.loc[1, "survival_months"] += 1  # the second slide row of patient 0
    path = tmp_path / "t.csv.gz"
    table.to_csv(path, index=False)
    with pytest.raises(PgoError) as err:
        load_survival(_survival(path))
    assert (
        f"patient {table.loc[0, 'case_id']!r} has rows that disagree (lines 2 and 3, "
        "column 'time'" in str(err.value)
    )
    table = porpoise_table(n_patients=4, n_double=1)
    table.loc[1, "C3_cnv"] += 1
    table.to_csv(path, index=False)
    spec = [{"path": str(path), "patient": "case_id", "groups": {"cnv": {"suffix": "_cnv"}}}]
    with pytest.raises(PgoError, match="lines 2 and 3, column 'C3_cnv'"):
        load_omics(spec, _survival(path))


def test_omics_groups_select_in_table_order_and_check_numbers(tmp_path: Path) -> None:
    table = porpoise_table(n_patients=3, n_double=1)
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    groups = {
        "rna": {"suffix": "_rnaseq"},
        "cnv": {"prefix": "C"},
        "mut": {"columns": ["M2_mut", "M0_mut"]},
        "other": {"regex": "^age$"},
    }
    loaded = load_omics(
        [{"path": str(path), "patient": "case_id", "groups": groups}], _survival(path)
    )
    assert loaded["rna"].columns == [c for c in table.columns if c.endswith("_rnaseq")]
    assert loaded["rna"].genes == [f"R{j}" for j in range(12)]
    assert loaded["cnv"].genes == [f"{j}_cnv" for j in range(8)]  # prefix C stripped
    assert loaded["mut"].columns == ["M2_mut", "M0_mut"]
    assert list(loaded["other"].values.index) == sorted(table["case_id"].unique())
    table["R3_rnaseq"] = table["R3_rnaseq"].astype(object)
    table.loc[2, "R3_rnaseq"] = "n/a?"
    table.to_csv(path, index=False)
    with pytest.raises(PgoError, match="line 4 column 'R3_rnaseq': value 'n/a\\?' is not a number"):
        load_omics([{"path": str(path), "patient": "case_id", "groups": groups}], _survival(path))


@pytest.mark.parametrize(
    "selector, message",
    [
        ({"suffix": "_methylation"}, "suffix '_methylation' selects no column"),
        ({"columns": ["R1_rnaseq", "nope"]}, "1 listed columns are not in the table, e.g. 'nope'"),
    ],
)
def test_a_group_that_selects_nothing_is_an_error(selector, message) -> None:
    with pytest.raises(PgoError, match="^where: ") as err:
        select_columns(["R1_rnaseq", "C1_cnv"], selector, "where")
    assert message in str(err.value)


def test_a_column_in_two_groups_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    porpoise_table(n_patients=3).to_csv(path, index=False)
    groups = {"a": {"suffix": "_cnv"}, "b": {"prefix": "C0"}}
    with pytest.raises(PgoError, match="column 'C0_cnv' is also selected by group 'a'"):
        load_omics([{"path": str(path), "patient": "case_id", "groups": groups}], _survival(path))


def test_random_splits_are_seeded_patient_splits() -> None:
    patients = [f"P{i:03d}" for i in range(50)]
    splits = random_splits(reversed(patients), n=15, test_fraction=0.2, seed=3)
    assert splits == random_splits(patients, n=15, test_fraction=0.2, seed=3)
    assert splits != random_splits(patients, n=15, test_fraction=0.2, seed=4)
    assert len({tuple(s["test"]) for s in splits}) == 15
    for s in splits:
        assert len(s["test"]) == 10 and sorted(s["train"] + s["test"]) == patients


def test_kfold_tests_each_patient_once() -> None:
    patients = [f"P{i}" for i in range(11)]
    folds = kfold_splits(patients, k=3, seed=0)
    tested = sorted(p for f in folds for p in f["test"])
    assert tested == sorted(patients)
    assert sorted(len(f["test"]) for f in folds) == [3, 4, 4]
    for f in folds:
        assert not set(f["train"]) & set(f["test"])
    with pytest.raises(PgoError, match="k-fold splits need 2 <= k <= patients"):
        kfold_splits(patients[:2], k=3, seed=0)


def _split_file(tmp_path: Path, patients: list[str], values: list[list[str]]) -> dict:
    table = pd.DataFrame({"TCGA ID": patients})
    for k, column in enumerate(values, start=1):
        table[f"Randomization - {k}"] = column
    path = tmp_path / "pnas_splits.csv"
    table.to_csv(path, index=False)
    return {
        "path": str(path),
        "patient": None,
        "columns": "Randomization - {k}",
        "train": "Train",
        "test": "Test",
    }


def test_split_file_reads_every_randomization_column(tmp_path: Path) -> None:
    section = _split_file(
        tmp_path, ["A", "B", "C"], [["Train", "Test", "Train"], ["Test", "Train", "Train"]]
    )
    assert read_split_file(section, ["C", "B", "A"]) == [
        {"train": ["A", "C"], "test": ["B"]},
        {"train": ["B", "C"], "test": ["A"]},
    ]


def test_split_file_and_table_must_name_the_same_patients(tmp_path: Path) -> None:
    section = _split_file(tmp_path, ["A", "B", "C", "X1", "X2"], [["Train"] * 4 + ["Test"]])
    with pytest.raises(
        PgoError,
        match=r"2 patients in the split table are not in the "
        r"survival table: X1, X2 \(the first at line 5, column 'TCGA ID'\); valid: a split file "
        r"naming exactly the survival table's patients$",
    ):
        read_split_file(section, ["A", "B", "C"])
    with pytest.raises(
        PgoError,
        match=r"1 patients in the survival table are not in the "
        r"split table: D; valid: a split file naming exactly the survival table's patients$",
    ):
        read_split_file(section, ["A", "B", "C", "D", "X1", "X2"])
    section = _split_file(tmp_path, ["A", "B"], [["Train", "Validation"]])
    with pytest.raises(
        PgoError,
        match="line 3 column 'Randomization - 1': value 'Validation' is neither 'Train' nor 'Test'",
    ):
        read_split_file(section, ["A", "B"])


def test_relative_paths_start_at_data_dir(tmp_path: Path) -> None:
    """A spec's data_dir (relative to the spec's folder) moves where its paths start; the
    data_dir argument (pgo-shards build --data-dir) wins over it."""
    spec_path = tmp_path / "specs" / "cohort.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(
        "data_dir: ../release\n"
        "survival: {path: t.csv, patient: p, time: t, event: e}\n"
        "omics: [{path: same, groups: {rna: {suffix: _rnaseq}}}]\n"
        "splits: {kind: file, file: {path: s.csv, first: 1}}\n"
    )
    spec = load_spec(spec_path)
    assert spec["survival"]["path"] == str(tmp_path / "release" / "t.csv")
    assert spec["splits"]["file"]["path"] == str(tmp_path / "release" / "s.csv")
    assert spec["splits"]["file"]["first"] == 1
    assert "data_dir" not in spec  # spent: every path is absolute
    spec = load_spec(spec_path, data_dir=tmp_path / "download")
    assert spec["omics"][0]["path"] == str(tmp_path / "download" / "t.csv")


@pytest.mark.parametrize("name", ["t.csv.zip", "t.csv.gz", "t.csv", "t.tsv.zip"])
@pytest.mark.parametrize("compression", [None, "gzip", "zip", "bz2"])
def test_tables_are_read_by_content_not_by_suffix(tmp_path: Path, name, compression) -> None:
    """PORPOISE's `.csv.zip` files are plain CSVs: what a file holds decides how it is read."""
    table = porpoise_table(n_patients=5, n_double=0)
    path = tmp_path / name
    if compression == "zip":
        compression = {"method": "zip", "archive_name": "t.csv"}
    table.to_csv(path, index=False, compression=compression, sep="\t" if ".tsv" in name else ",")
    survival = load_survival(_survival(path))
    assert list(survival.index) == sorted(table["case_id"])


def test_a_corrupt_zip_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.zip"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(PgoError, match=f"survival table {path}: cannot parse: "):
        load_survival(_survival(path))
