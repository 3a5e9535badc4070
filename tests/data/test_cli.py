"""`pgo-shards`: every bad input of the issue gives exit 2, one `error:` line naming the
file/row/column, and leaves nothing at the output path; the demo command; the entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpc_pgo.data.cli import main
from hpc_pgo.data.shards import verify

from .conftest import (
    PF_PATIENT_REGEX,
    leftovers,
    porpoise_flags,
    porpoise_table,
    tree_bytes,
    write_pathomic,
)

REPO = Path(__file__).resolve().parents[2]


def _fails(argv: list[str], capsys, out: Path) -> str:
    """Run pgo-shards expecting bad input: exit 2, one error line, nothing left at `out`."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks exit from parse_args
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert leftovers(out.parent, out.name) == []
    return lines[0]


def _porpoise_with(tmp_path: Path, change) -> list[str]:
    table = porpoise_table(n_patients=6, n_double=1)
    change(table)
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    return porpoise_flags(path)


def _set(row: int, column: str, value):
    def change(table: pd.DataFrame) -> None:
        table[column] = table[column].astype(object)
        table.loc[row, column] = value

    return change


BAD_TABLES = {
    "missing patient id": (
        _set(3, "case_id", np.nan),
        "bad.csv line 5: missing patient id in column 'case_id'",
    ),
    "duplicated id, conflicting": (
        _set(1, "censorship", 1 - porpoise_table().loc[0, "censorship"]),
        "has rows that disagree (lines 2 and 3, column 'event'",
    ),
    "NaN time": (
        _set(4, "survival_months", np.nan),
        "bad.csv line 6 column 'survival_months': time nan",
    ),
    "negative time": (
        _set(4, "survival_months", -3.5),
        "bad.csv line 6 column 'survival_months': time -3.5",
    ),
    "event not 0/1": (
        _set(2, "censorship", 2),
        "bad.csv line 4 column 'censorship': value 2 is not 0 or 1",
    ),
    "non-numeric omics": (
        _set(5, "C2_cnv", "amp"),
        "bad.csv line 7 column 'C2_cnv': value 'amp' is not a number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_exit_2_naming_file_line_column(tmp_path: Path, capsys, case: str) -> None:
    change, message = BAD_TABLES[case]
    out = tmp_path / "out"
    line = _fails(["build", *_porpoise_with(tmp_path, change), "--out", str(out)], capsys, out)
    assert message in line


def test_a_group_selecting_no_column(porpoise, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    line = _fails(
        ["build", *porpoise.flags, "--group", "meth:suffix=_methylation", "--out", str(out)],
        capsys,
        out,
    )
    assert "group 'meth': suffix '_methylation' selects no column" in line
    assert str(porpoise.path) in line


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--group", "cnv=_cnv"], "--group 'cnv=_cnv': expected NAME:KIND=VALUE"),
        (["--splits", "bootstrap:3"], "expected random[:N], kfold[:K] or file:PATH"),
        (["--patient-col", "patient"], "no patient column 'patient'; columns start"),
        (["--time-col", "os_months"], "no column 'os_months'"),
        (["--event-col", "event"], "not allowed with argument --censorship-col"),
        (["--missing", "sometimes"], "argument --missing: invalid choice: 'sometimes'"),
    ],
)
def test_bad_flags_exit_2(porpoise, tmp_path: Path, capsys, flag, message) -> None:
    out = tmp_path / "out"
    assert message in _fails(["build", *porpoise.flags, *flag, "--out", str(out)], capsys, out)


def test_flags_alone_need_the_survival_columns(porpoise, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    line = _fails(
        [
            "build",
            "--survival",
            str(porpoise.path),
            "--patient-col",
            "case_id",
            "--censorship-col",
            "censorship",
            "--out",
            str(out),
        ],
        capsys,
        out,
    )
    assert line == "error: build: --time-col is needed with --survival (or give --spec FILE)"


def _pathomic_args(cohort, out: Path, *extra: str) -> list[str]:
    return ["build", "--spec", str(cohort.spec_path), "--out", str(out), "--no-progress", *extra]


def test_split_file_patients_must_match_the_table(tmp_path: Path, capsys) -> None:
    cohort = write_pathomic(tmp_path / "pf", n_patients=6, rois=1)
    extra = pd.DataFrame(
        {
            "TCGA ID": ["TCGA-ZZ-0001", "TCGA-ZZ-0002"],
            **{c: "Train" for c in cohort.splits.columns[1:]},
        }
    )
    pd.concat([cohort.splits, extra]).to_csv(cohort.root / "pnas_splits.csv", index=False)
    out = tmp_path / "out"
    line = _fails(_pathomic_args(cohort, out), capsys, out)
    assert (
        "pnas_splits.csv: 2 patients in the split table are not in the survival table: "
        "TCGA-ZZ-0001, TCGA-ZZ-0002"
    ) in line
    cohort.splits.iloc[1:].to_csv(cohort.root / "pnas_splits.csv", index=False)
    line = _fails(_pathomic_args(cohort, out), capsys, out)
    assert (
        "1 patients in the survival table are not in the split table: "
        f"{cohort.splits.iloc[0]['TCGA ID']}"
    ) in line


def test_an_image_that_does_not_decode(tmp_path: Path, capsys) -> None:
    cohort = write_pathomic(tmp_path / "pf", n_patients=6, rois=2)
    broken = cohort.rois[sorted(cohort.rois)[4]][1]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated PNG
    out = tmp_path / "new" / "deeper" / "out"  # parents created by the build are removed too
    line = _fails(_pathomic_args(cohort, out, "--workers", "2"), capsys, out)
    assert line.startswith(f"error: image {broken}: does not decode")
    assert not (tmp_path / "new").exists()


def test_a_slide_openslide_cannot_open(porpoise, tmp_path: Path, capsys) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    bad = slides / f"{porpoise.table['case_id'][0]}-01Z-00-DX1.ABCDEF.svs"
    bad.write_bytes(b"not a slide" * 100)
    out = tmp_path / "out"
    line = _fails(
        [
            "build",
            *porpoise.flags,
            "--images",
            str(slides),
            "--image-kind",
            "slides",
            "--patient-regex",
            PF_PATIENT_REGEX,
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        capsys,
        out,
    )
    assert str(bad) in line and "OpenSlide cannot open it" in line


def test_missing_modalities_are_dropped_with_reasons_by_flag(
    porpoise, tmp_path: Path, capsys
) -> None:
    """The PORPOISE cohort with ROIs for all but two patients: dropped (listed with the reason)
    or kept with a mask, by --missing."""
    from .conftest import roi_image

    rois = tmp_path / "rois"
    rois.mkdir()
    rng = np.random.default_rng(0)
    patients = sorted(porpoise.table["case_id"].unique())
    for p in patients[2:]:
        roi_image(rng, 24).save(rois / f"{p}_0.png")
    args = [
        "build",
        *porpoise.flags,
        "--images",
        str(rois),
        "--patient-regex",
        PF_PATIENT_REGEX,
        "--splits",
        "kfold:3",
        "--workers",
        "1",
    ]
    assert main([*args, "--out", str(tmp_path / "drop")]) == 0
    manifest = json.loads((tmp_path / "drop" / "manifest.json").read_text())
    assert [d["patient"] for d in manifest["dropped"]] == patients[:2]
    assert all(
        d["reason"] == f"missing modality: image (no image file in {rois})"
        for d in manifest["dropped"]
    )
    assert main([*args, "--missing", "mask", "--out", str(tmp_path / "mask")]) == 0
    manifest = json.loads((tmp_path / "mask" / "manifest.json").read_text())
    assert manifest["dropped"] == [] and manifest["counts"]["patients"] == len(patients)
    capsys.readouterr()


def test_flags_override_the_spec(tmp_path: Path, capsys) -> None:
    cohort = write_pathomic(tmp_path / "pf", n_patients=8, rois=1, without_images=(3,))
    out = tmp_path / "out"
    assert (
        main(
            _pathomic_args(
                cohort,
                out,
                "--splits",
                "kfold:4",
                "--missing",
                "mask",
                "--tile-size",
                "64",
                "--cohort",
                "renamed",
                "--group",
                "cnv:prefix=GENE1",
                "--workers",
                "1",
            )
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cohort"] == "renamed" and manifest["missing"] == "mask"
    assert manifest["splits"]["kind"] == "kfold" and len(manifest["splits"]["folds"]) == 4
    assert manifest["groups"] == {"cnv": [c for c in cohort.cnv if c.startswith("GENE1")]}
    assert manifest["genes"]["cnv"] == [c[len("GENE1") :] for c in manifest["groups"]["cnv"]]
    assert manifest["image"] == {"format": "png", "kind": "tiles", "size": [64, 64]}
    censored = cohort.dataset.drop_duplicates("TCGA ID")["censored"]
    # with --missing mask the patient without ROIs stays: one sample, placeholder image
    assert manifest["counts"] == {
        "patients": 8,
        "units": 7 * 1 + 1,  # one 64 px tile a ROI
        "events": int((1 - censored).sum()),
    }
    assert main(_pathomic_args(cohort, tmp_path / "omics_only", "--no-images")) == 0
    manifest = json.loads((tmp_path / "omics_only" / "manifest.json").read_text())
    assert manifest["image"] is None and manifest["counts"]["units"] == 8
    capsys.readouterr()


def test_demo_builds_the_simulated_cohort(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--patients",
        "12",
        "--rois",
        "2",
        "--image-size",
        "32",
        "--seed",
        "5",
        "--no-progress",
        "--workers",
        "2",
    ]
    assert main(args) == 0
    assert "built" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cohort"] == "demo"
    assert manifest["counts"]["patients"] == 12 and manifest["counts"]["units"] == 24
    assert manifest["image"] == {"format": "png", "kind": "rois", "size": [32, 32]}
    assert sorted(manifest["groups"]) == ["cnv", "mut", "rna"]
    assert verify(out).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # simulated files removed
    first = tree_bytes(out)
    assert main([*args, "--force", "--workers", "1"]) == 0
    assert tree_bytes(out) == first
    kept = tmp_path / "files"
    assert main([*args[:2], str(tmp_path / "demo2"), *args[3:], "--cohort-dir", str(kept)]) == 0
    assert (kept / "truth.csv").is_file() and (kept / "cohort.yaml").is_file()
    bad = _fails(
        ["demo", "--out", str(tmp_path / "d3"), "--patients", "3"], capsys, tmp_path / "d3"
    )
    assert "n_patients=3" in bad


@pytest.mark.slow  # a fresh interpreter imports torch (through hpc_pgo): seconds
def test_python_m_entry_point(tmp_path: Path) -> None:
    """`python -m hpc_pgo.data` is the same command line (the console script `pgo-shards`
    calls the same hpc_pgo.data.cli:main)."""
    run = subprocess.run(
        [sys.executable, "-m", "hpc_pgo.data", "info", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"error: {tmp_path}: no manifest.json; not a shard set (build one with pgo-shards build)"
    )


@pytest.mark.slow  # a fresh interpreter (torch import)
def test_sigterm_during_a_build_leaves_nothing(tmp_path: Path) -> None:
    import os
    import signal

    from hpc_pgo import hold
    from hpc_pgo.data.shards import SHARD_GLOB

    cohort = write_pathomic(tmp_path / "pf", n_patients=6, rois=2)
    out, held = tmp_path / "out", tmp_path / "held"
    # the build holds once the first patient is in the staged shard set (hpc_pgo.hold)
    env = {**os.environ, hold.ENV: hold.spec("build", 1, held)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpc_pgo.data", *_pathomic_args(cohort, out, "--workers", "2")],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        hold.wait_held(held, timeout_s=120, running=lambda: proc.poll() is None)
        # it has written something and cannot have finished: one staged directory, a shard open
        (staged,) = leftovers(tmp_path, "out")
        assert staged.startswith(".out.tmp-") and list((tmp_path / staged).glob(SHARD_GLOB))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not hold.released_marker(held).exists()  # it ended while held
    assert leftovers(tmp_path, "out") == []
