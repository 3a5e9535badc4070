"""The shipped cohort specs (configs/cohorts/) build the public releases' layouts as they are.

Each test writes a SMALL cohort with the release's own file names and columns into tmp_path and
builds it through `pgo-shards build --spec configs/cohorts/<spec>.yaml --data-dir DIR`, then
reads the manifest back:

- PORPOISE (`tcga_<x>_all_clean.csv.zip`: one wide CSV, one row per slide; a plain CSV despite
  its name, or a real zip, or a .gz named with --survival);
- Pathomic Fusion (`all_dataset.csv` one row per patient, the split file with 15 Train/Test
  columns, a folder of ROI PNGs cut into the spec's 512 px tiles): TCGA-GBMLGG (`pnas_splits.csv`,
  `all_st/`) and TCGA-KIRC (`kirc_splits.csv` with an unnamed patient column, `KIRC_st/`).

Bad input is one `error:` line, exit 2, nothing at --out: survival columns missing, a split file
naming a patient the table lacks, split columns numbered from 0 where the spec says 1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from hpc_pgo.data.cli import main
from hpc_pgo.data.shards import read_manifest, verify

from .conftest import leftovers, porpoise_table, tcga_id

REPO = Path(__file__).resolve().parents[2]
COHORTS = REPO / "configs" / "cohorts"
DATA_CONFIGS = REPO / "configs" / "data"
N_PATIENTS = 20

# spec file -> the data config whose shard set it builds
SPEC_OF_DATA = {
    "tcga_kirc": "tcga_kirc_porpoise",
    "tcga_gbmlgg_porpoise": "tcga_gbmlgg_porpoise",
    "tcga_kirc_pathomic": "tcga_kirc_pathomic",
    "tcga_gbmlgg_pathomic": "tcga_gbmlgg_pathomic",
}


def _spec(name: str) -> Path:
    return COHORTS / f"{name}.yaml"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _build(spec: str, data_dir: Path | None, out: Path, *extra: str) -> list[str]:
    argv = ["build", "--spec", str(_spec(spec)), "--out", str(out), "--no-progress"]
    argv += ["--workers", "1"] + (["--data-dir", str(data_dir)] if data_dir else [])
    return argv + list(extra)


def _builds(argv: list[str], capsys) -> dict:
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert out.startswith("built "), out
    return read_manifest(argv[argv.index("--out") + 1])


def _fails(argv: list[str], capsys) -> str:
    """Exit 2 with exactly one `error:` line (no traceback); nothing left at --out."""
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    out = Path(argv[argv.index("--out") + 1])
    assert leftovers(out.parent, out.name) == []
    return lines[0]


# --------------------------------------------------------------------------- PORPOISE


def _write_porpoise(path: Path, table: pd.DataFrame, storage: str) -> Path:
    """As the release: a leading unnamed index column; `storage` plain (whatever the name),
    zip (a real archive of one CSV) or gzip."""
    archive = path.name.removesuffix(".zip").removesuffix(".gz")
    compression = {
        "plain": None,
        "zip": {"method": "zip", "archive_name": archive},
        "gzip": "gzip",
    }[storage]
    table.to_csv(path, index=True, compression=compression)
    return path


def _check_porpoise(manifest: dict, table: pd.DataFrame, cohort: str) -> None:
    patients = table.drop_duplicates("case_id").set_index("case_id").sort_index()
    assert manifest["cohort"] == cohort
    assert manifest["counts"] == {
        "patients": N_PATIENTS,
        "units": N_PATIENTS,  # no images: one unit per patient
        "events": int((patients["censorship"] == 0).sum()),
    }
    assert manifest["image"] is None
    assert manifest["groups"] == {
        group: [c for c in table.columns if c.endswith(suffix)]
        for group, suffix in (("cnv", "_cnv"), ("mut", "_mut"), ("rna", "_rnaseq"))
    }
    assert manifest["genes"]["rna"] == [f"R{j}" for j in range(12)]
    for patient, record in manifest["patients"].items():
        assert record["time"] == patients.loc[patient, "survival_months"]
        assert record["event"] == 1 - patients.loc[patient, "censorship"]
    splits = manifest["splits"]
    assert splits["kind"] == "random" and len(splits["folds"]) == 15
    for fold in splits["folds"]:
        assert len(fold["test"]) == 4  # round(0.2 * 20)
        assert sorted(fold["train"] + fold["test"]) == sorted(patients.index)
    assert manifest["dropped"] == []  # the two-slide patients' rows agree: collapsed


@pytest.mark.parametrize("storage", ["plain", "zip"])
@pytest.mark.parametrize("spec", ["tcga_kirc_porpoise", "tcga_gbmlgg_porpoise"])
def test_porpoise_release_builds_with_the_shipped_spec(
    tmp_path: Path, capsys, spec: str, storage: str
) -> None:
    raw = yaml.safe_load(_spec(spec).read_text())
    data = tmp_path / "release"
    data.mkdir()
    table = porpoise_table(n_patients=N_PATIENTS, n_double=2)
    _write_porpoise(data / raw["survival"]["path"], table, storage)
    out = tmp_path / "out"
    manifest = _builds(_build(spec, data, out), capsys)
    _check_porpoise(manifest, table, raw["cohort"])
    assert manifest["spec"]["survival"]["path"] == str(data / raw["survival"]["path"])
    assert verify(out).ok


def test_porpoise_file_named_by_a_flag_and_default_output(tmp_path: Path) -> None:
    """--survival names the downloaded file (the spec's `same` omics table follows it); without
    --out the build goes to shards/<cohort>, the path data=tcga_kirc reads; run as users do."""
    table = porpoise_table(n_patients=N_PATIENTS, n_double=2)
    path = _write_porpoise(tmp_path / "kirc_download.csv.gz", table, "gzip")
    work = tmp_path / "work"
    work.mkdir()
    command = [sys.executable, "-m", "hpc_pgo.data", "build", "--spec"]
    command += [str(_spec("tcga_kirc_porpoise")), "--survival", str(path), "--no-progress"]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shards = yaml.safe_load((DATA_CONFIGS / "tcga_kirc.yaml").read_text())["shards"]
    manifest = read_manifest(work / shards)
    _check_porpoise(manifest, table, "tcga_kirc")
    assert [t["path"] for t in manifest["spec"]["omics"]] == [str(path)]
    info = subprocess.run(
        [sys.executable, "-m", "hpc_pgo.data", "info", shards],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert info.returncode == 0, info.stderr
    assert f"patients {N_PATIENTS}, units {N_PATIENTS}," in info.stdout


def test_shipped_spec_without_its_files_names_the_flags(tmp_path: Path, capsys) -> None:
    """No --data-dir: the spec's relative paths start at its own folder, where the release is
    not; the error says so and which flag gives the file."""
    out = tmp_path / "out"
    line = _fails(_build("tcga_kirc_porpoise", None, out), capsys)
    assert line.startswith(f"error: survival table {COHORTS / 'tcga_kirc_all_clean.csv.zip'}: ")
    assert "valid: --data-dir DIR, the folder holding the downloaded files, or --survival PATH" in (
        line
    )
    line = _fails(_build("tcga_kirc_porpoise", tmp_path / "nowhere", out), capsys)
    assert f"start at --data-dir {tmp_path / 'nowhere'}" in line
    missing = tmp_path / "typo.csv.gz"
    line = _fails(_build("tcga_kirc_porpoise", None, out, "--survival", str(missing)), capsys)
    assert line == f"error: survival table {missing}: not found (given by --survival)"


@pytest.mark.parametrize("column", ["survival_months", "censorship"])
def test_porpoise_csv_without_a_survival_column(tmp_path: Path, capsys, column: str) -> None:
    table = porpoise_table(n_patients=N_PATIENTS, n_double=2).drop(columns=[column])
    path = _write_porpoise(tmp_path / "tcga_kirc_all_clean.csv.zip", table, "plain")
    line = _fails(_build("tcga_kirc_porpoise", tmp_path, tmp_path / "out"), capsys)
    flag = {"survival_months": "--time-col", "censorship": "--censorship-col"}[column]
    assert line.startswith(f"error: survival table {path} line 1: no column {column!r}, the ")
    assert f", {flag})" in line
    assert "; valid: a column of its header (" in line and "'case_id'" in line


# --------------------------------------------------------------------------- Pathomic Fusion


def _roi(path: Path, width: int, height: int, seed: int) -> None:
    """A smooth RGB image (small PNG) of width x height px."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 200, 3)
    pixels = (base + (x // 8 + y // 8)[..., None] % 56).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)


# ROI sizes (width, height) per patient index; absent: one 512 px ROI. 512 px tiles every 256
# px: a 512 px ROI is 1 tile, 768 x 512 is 2, a 1024 px ROI (the GBMLGG release's size) is 9.
ROI_SIZES = {0: [(1024, 1024)], 1: [(512, 512), (512, 512)], 2: [(768, 512)]}
NO_ROI = 5  # a patient without a ROI file: dropped
NAN_OMICS = 7  # a patient with a missing omics value: dropped


def _tiles(width: int, height: int) -> int:
    return ((width - 512) // 256 + 1) * ((height - 512) // 256 + 1)


def _write_pathomic(root: Path, cancer: str, numbered_from: int = 1) -> dict:
    """A small cohort in Pathomic Fusion's layout for `cancer` (gbmlgg | kirc)."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    patients = [tcga_id(i) for i in range(N_PATIENTS)]
    dataset = pd.DataFrame(
        {
            "TCGA ID": patients,
            "censored": rng.integers(0, 2, N_PATIENTS),
            "Survival months": np.round(rng.uniform(1, 120, N_PATIENTS), 2),
            "Grade": rng.integers(2, 5, N_PATIENTS),
            "Histology": rng.choice(["astrocytoma", "glioblastoma"], N_PATIENTS),
        }
    )
    if cancer == "gbmlgg":
        dataset.insert(0, "indexes", np.arange(N_PATIENTS))
        omics = {
            "idh mutation": rng.integers(0, 2, N_PATIENTS).astype(float),
            "codeletion": rng.integers(0, 2, N_PATIENTS),
            **{g: rng.integers(-2, 3, N_PATIENTS) for g in ("10q", "EGFR", "CDKN2A", "PTEN")},
        }
        omics["idh mutation"][NAN_OMICS] = np.nan
        groups = {"mut": ["idh mutation"], "cnv": ["codeletion", "10q", "EGFR", "CDKN2A", "PTEN"]}
    else:
        omics = {f"R{j}_rnaseq": np.round(rng.normal(size=N_PATIENTS), 3) for j in range(5)}
        omics |= {f"C{j}_cnv": rng.integers(-2, 3, N_PATIENTS).astype(float) for j in range(4)}
        omics |= {f"{g}_mut": rng.integers(0, 2, N_PATIENTS) for g in ("VHL", "PBRM1", "BAP1")}
        omics["C2_cnv"][NAN_OMICS] = np.nan
        groups = {
            group: [c for c in omics if c.endswith(suffix)]
            for group, suffix in (("cnv", "_cnv"), ("mut", "_mut"), ("rna", "_rnaseq"))
        }
    dataset = dataset.assign(**omics)
    dataset.to_csv(root / "all_dataset.csv", index=False)

    splits = {}
    for k in range(numbered_from, numbered_from + 15):
        test = set(rng.choice(N_PATIENTS, size=5, replace=False).tolist())
        splits[k] = ["Test" if i in test else "Train" for i in range(N_PATIENTS)]
    if cancer == "gbmlgg":  # pnas_splits.csv: TCGA ID, Randomization - 1 .. 15
        split_path = root / "pnas_splits.csv"
        columns = {f"Randomization - {k}": v for k, v in splits.items()}
        pd.DataFrame({"TCGA ID": patients, **columns}).to_csv(split_path, index=False)
    else:  # kirc_splits.csv: `,1,2,...,15`, the patients as the unnamed index
        split_path = root / "kirc_splits.csv"
        columns = {str(k): v for k, v in splits.items()}
        pd.DataFrame(columns, index=patients).to_csv(split_path)

    roi_dir = root / ("all_st" if cancer == "gbmlgg" else "KIRC_st")
    roi_dir.mkdir()
    tiles = {}
    for i, patient in enumerate(patients):
        if i == NO_ROI:
            continue
        slide = f"{patient}-01Z-00-DX1.{i:08x}-aaaa-bbbb"  # dots in the slide name, as TCGA's
        sizes = ROI_SIZES.get(i, [(512, 512)])
        for k, (width, height) in enumerate(sizes, start=1):
            _roi(roi_dir / f"{slide}_{k}.png", width, height, seed=i * 10 + k)
        tiles[patient] = sum(_tiles(w, h) for w, h in sizes)
    return {
        "dataset": dataset,
        "splits": pd.DataFrame(columns, index=patients),
        "split_path": split_path,
        "groups": groups,
        "tiles": tiles,
    }


@pytest.mark.parametrize("cancer", ["gbmlgg", "kirc"])
def test_pathomic_release_builds_with_the_shipped_spec(tmp_path: Path, capsys, cancer: str) -> None:
    spec = f"tcga_{cancer}_pathomic"
    cohort = _write_pathomic(tmp_path / "data", cancer)
    out = tmp_path / "out"
    manifest = _builds(_build(spec, tmp_path / "data", out), capsys)

    dataset = cohort["dataset"].set_index("TCGA ID")
    kept = sorted(set(dataset.index) - {tcga_id(NO_ROI), tcga_id(NAN_OMICS)})
    assert sorted(manifest["patients"]) == kept
    assert manifest["counts"] == {
        "patients": len(kept),
        "units": sum(cohort["tiles"][p] for p in kept),
        "events": int((dataset.loc[kept, "censored"] == 0).sum()),
    }
    assert {p: r["units"] for p, r in manifest["patients"].items()} == {
        p: cohort["tiles"][p] for p in kept
    }
    assert manifest["groups"] == cohort["groups"]  # clinical columns (Grade, ...) in no group
    assert manifest["image"] == {"format": "png", "kind": "tiles", "size": [512, 512]}
    reasons = {d["patient"]: d["reason"] for d in manifest["dropped"]}
    assert sorted(reasons) == sorted([tcga_id(NO_ROI), tcga_id(NAN_OMICS)])
    assert all(r.startswith("missing modality: ") for r in reasons.values())

    splits = manifest["splits"]
    assert splits["kind"] == "file" and splits["source"] == str(cohort["split_path"])
    assert splits["columns"] == list(cohort["splits"].columns)
    assert len(splits["folds"]) == 15
    for fold, column in zip(splits["folds"], splits["columns"], strict=True):
        side = cohort["splits"][column]
        assert fold["test"] == [p for p in kept if side[p] == "Test"]
        assert fold["train"] == [p for p in kept if side[p] == "Train"]
    assert verify(out).ok


@pytest.mark.parametrize("cancer", ["gbmlgg", "kirc"])
def test_split_file_numbered_from_0_is_refused(tmp_path: Path, capsys, cancer: str) -> None:
    """The shipped specs pin Pathomic Fusion's numbering (splits.file.first: 1): a file whose
    split columns start at 0 would otherwise make fold k the paper's split k + 1 without a word.
    --split-first 0 says the file really is numbered so; then the mapping is recorded."""
    spec = f"tcga_{cancer}_pathomic"
    cohort = _write_pathomic(tmp_path / "data", cancer, numbered_from=0)
    path = cohort["split_path"]
    first, last = cohort["splits"].columns[0], cohort["splits"].columns[-1]
    line = _fails(_build(spec, tmp_path / "data", tmp_path / "out"), capsys)
    assert line == (
        f"error: split table {path}: columns {first!r} .. {last!r} are numbered from 0 instead "
        "of 1 (the spec's splits.file.first: 1); valid: "
        f"{'Randomization - {k}' if cancer == 'gbmlgg' else '{k}'!r} numbered 1..15, or set "
        "splits.file.first: 0 (--split-first 0) if this file really numbers its splits from 0"
    )
    manifest = _builds(
        _build(spec, tmp_path / "data", tmp_path / "out", "--split-first", "0"), capsys
    )
    assert manifest["splits"]["columns"] == list(cohort["splits"].columns)
    assert manifest["spec"]["splits"]["file"]["first"] == 0


@pytest.mark.parametrize("cancer", ["gbmlgg", "kirc"])
def test_split_file_with_a_patient_the_table_lacks(tmp_path: Path, capsys, cancer: str) -> None:
    spec = f"tcga_{cancer}_pathomic"
    cohort = _write_pathomic(tmp_path / "data", cancer)
    path = cohort["split_path"]
    stranger = pd.DataFrame(
        {c: ["Train"] for c in cohort["splits"].columns}, index=["TCGA-ZZ-9999"]
    )
    splits = pd.concat([cohort["splits"], stranger])
    if cancer == "gbmlgg":
        splits.rename_axis("TCGA ID").reset_index().to_csv(path, index=False)
    else:
        splits.to_csv(path)
    line = _fails(_build(spec, tmp_path / "data", tmp_path / "out"), capsys)
    column = "'TCGA ID'" if cancer == "gbmlgg" else "1 (unnamed)"  # kirc_splits.csv: `,1,...`
    assert line == (
        f"error: split table {path}: 1 patients in the split table are not in the survival "
        f"table: TCGA-ZZ-9999 (the first at line {N_PATIENTS + 2}, column {column}); valid: a "
        "split file naming exactly the survival table's patients"
    )


# --------------------------------------------------------------------------- data configs


@pytest.mark.parametrize("data", sorted(SPEC_OF_DATA))
def test_each_data_config_reads_the_shard_set_its_spec_builds(data: str) -> None:
    config = yaml.safe_load((DATA_CONFIGS / f"{data}.yaml").read_text())
    spec = yaml.safe_load(_spec(SPEC_OF_DATA[data]).read_text())
    assert config["shards"] == f"shards/{spec['cohort']}"  # pgo-shards build's default --out
    images = spec.get("images") is not None
    assert config["modalities"] == (["genomic", "image"] if images else ["genomic"])
    assert (config["image_size"] is not None) == images
    assert config["n_splits"] == spec["splits"].get("n", 15)  # the release's split files: 15


def test_every_shipped_spec_has_a_data_config() -> None:
    assert sorted(SPEC_OF_DATA.values()) == sorted(p.stem for p in COHORTS.glob("*.yaml"))
    missing = [d for d in SPEC_OF_DATA if not (DATA_CONFIGS / f"{d}.yaml").is_file()]
    assert missing == []


def test_split_file_moved_elsewhere_keeps_the_spec_layout(tmp_path: Path, capsys) -> None:
    """--splits file:PATH changes only where the split file is: the spec's column template and
    numbering (splits.file.first: 1) stay, so a 0-numbered file there is still refused."""
    cohort = _write_pathomic(tmp_path / "data", "kirc")
    moved = cohort["split_path"].rename(tmp_path / "elsewhere.csv")
    flag = ["--splits", f"file:{moved}"]
    manifest = _builds(
        _build("tcga_kirc_pathomic", tmp_path / "data", tmp_path / "out", *flag), capsys
    )
    assert manifest["splits"]["source"] == str(moved)
    assert manifest["splits"]["columns"] == [str(k) for k in range(1, 16)]
    cohort["splits"].rename(columns=lambda c: str(int(c) - 1)).to_csv(moved)
    argv = _build("tcga_kirc_pathomic", tmp_path / "data", tmp_path / "out2", *flag)
    assert "are numbered from 0 instead of 1" in _fails(argv, capsys)


def test_data_dir_needs_a_spec(tmp_path: Path, capsys) -> None:
    argv = ["build", "--survival", "t.csv", "--patient-col", "p", "--time-col", "t"]
    argv += ["--event-col", "e", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    assert _fails(argv, capsys) == (
        "error: build: --data-dir needs --spec FILE (it is where the spec's relative paths "
        "start; flag paths are relative to the working directory)"
    )
