"""Small cohorts in the two real layouts, written into tmp_path with numpy, pandas and PIL.

- PORPOISE (TCGA-KIRC release): one wide CSV(.gz), one row per slide, `case_id`,
  `survival_months`, `censorship` (1 = censored), omics columns `<GENE>_cnv`, `<GENE>_mut`,
  `<GENE>_rnaseq` repeated on each slide row of a patient; no images.
- Pathomic Fusion: `all_dataset.csv` (`TCGA ID`, `censored`, `Survival months`, 80 feature
  columns, one row per ROI), `pnas_splits.csv` (`TCGA ID`, `Randomization - 1..15` holding
  Train/Test) and a folder of ROI PNGs named `<slide>_<k>.png` (slide names carry dots, as
  TCGA's do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
import yaml
from PIL import Image

PF_PATIENT_REGEX = r"^(?P<patient>TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})"


def tcga_id(i: int) -> str:
    return f"TCGA-{'AB'[i % 2]}{i % 7}-{1000 + 37 * i:04d}"


# --------------------------------------------------------------------------- PORPOISE layout


def porpoise_table(n_patients: int = 12, n_double: int = 2, seed: int = 0) -> pd.DataFrame:
    """One row per slide; the first `n_double` patients have two slides with equal omics."""
    rng = np.random.default_rng(seed)
    genes_rna = [f"R{j}" for j in range(12)]
    genes_cnv = [f"C{j}" for j in range(8)]
    genes_mut = [f"M{j}" for j in range(3)]
    rows = []
    for i in range(n_patients):
        patient = tcga_id(i)
        row = {
            "case_id": patient,
            "age": int(rng.integers(30, 90)),
            "site": patient[5:7],
            "survival_months": round(float(rng.uniform(0.5, 120)), 2),
            "censorship": int(rng.random() < 0.7),
            "is_female": float(rng.integers(0, 2)),
            "oncotree_code": "CCRCC",
            "train": 1.0,
        }
        row.update({f"{g}_rnaseq": round(float(rng.normal()), 4) for g in genes_rna})
        row.update({f"{g}_cnv": int(rng.integers(-2, 3)) for g in genes_cnv})
        row.update({f"{g}_mut": int(rng.random() < 0.3) for g in genes_mut})
        for slide in range(2 if i < n_double else 1):
            rows.append({"slide_id": f"{patient}-01Z-00-DX{slide + 1}.ABCDEF.svs", **row})
    table = pd.DataFrame(rows)
    first = [
        "case_id",
        "slide_id",
        "age",
        "site",
        "survival_months",
        "censorship",
        "is_female",
        "oncotree_code",
        "train",
    ]
    return table[first + [c for c in table.columns if c not in first]]


def porpoise_flags(path: Path) -> list[str]:
    """The `pgo-shards build` flags that import a PORPOISE-layout table."""
    return [
        "--survival",
        str(path),
        "--patient-col",
        "case_id",
        "--time-col",
        "survival_months",
        "--censorship-col",
        "censorship",
        "--omics",
        "same",
        "--group",
        "cnv:suffix=_cnv",
        "--group",
        "mut:suffix=_mut",
        "--group",
        "rna:suffix=_rnaseq",
        "--splits",
        "random:15",
        "--no-progress",
    ]


def write_porpoise(path: Path, table: pd.DataFrame) -> Path:
    """Write like the release: a leading unnamed index column, gzipped when path ends .gz."""
    table.to_csv(path, index=True)
    return path


@dataclass
class PorpoiseCohort:
    path: Path
    table: pd.DataFrame
    flags: list[str]


@pytest.fixture
def porpoise(tmp_path: Path) -> PorpoiseCohort:
    table = porpoise_table()
    path = write_porpoise(tmp_path / "kirc_small.csv.gz", table)
    return PorpoiseCohort(path, table, porpoise_flags(path))


# --------------------------------------------------------------------------- Pathomic Fusion


@dataclass
class PathomicCohort:
    root: Path
    dataset: pd.DataFrame  # all_dataset.csv as written (one row per ROI)
    splits: pd.DataFrame  # pnas_splits.csv as written
    cnv: list[str]
    mut: list[str]
    rois: dict[str, list[Path]]  # patient -> its ROI files
    spec_path: Path
    spec: dict


def roi_image(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def write_pathomic(
    root: Path,
    n_patients: int = 8,
    rois: int = 2,
    size: int = 64,
    without_images: tuple[int, ...] = (),
    seed: int = 1,
    tile: dict | None = None,
) -> PathomicCohort:
    """Write a Pathomic-Fusion-layout cohort; patients with index in `without_images` get no
    ROI files (they stay in the tables and the split file)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    roi_dir = root / "rois"
    roi_dir.mkdir(exist_ok=True)
    cnv = [f"GENE{j}_cnv" for j in range(60)]
    mut = [f"{g}_mutation" for g in ("IDH1", "TP53", "ATRX", "PTEN", "EGFR")] + [
        f"MUTSIG{j}" for j in range(15)
    ]
    rows, files = [], {}
    for i in range(n_patients):
        patient = tcga_id(i)
        record = {
            "TCGA ID": patient,
            "Histology": "clear cell",
            "Grade": int(rng.integers(1, 4)),
            "censored": int(rng.random() < 0.6),
            "Survival months": round(float(rng.uniform(1, 100)), 3),
        }
        record.update({c: int(rng.integers(-1, 2)) for c in cnv})
        record.update({c: int(rng.random() < 0.2) for c in mut})
        slide = f"{patient}-01Z-00-DX1.{i:08x}-aaaa-bbbb"
        files[patient] = []
        for k in range(rois):
            rows.append(record)  # one row per ROI, identical per patient
            if i not in without_images:
                path = roi_dir / f"{slide}_{k + 1}.png"
                roi_image(rng, size).save(path)
                files[patient].append(path)
    dataset = pd.DataFrame(rows)
    dataset.to_csv(root / "all_dataset.csv", index=False)
    patients = [tcga_id(i) for i in range(n_patients)]
    split_cols = {}
    for k in range(1, 16):
        test = set(rng.choice(n_patients, size=max(2, n_patients // 4), replace=False).tolist())
        split_cols[f"Randomization - {k}"] = [
            "Test" if i in test else "Train" for i in range(n_patients)
        ]
    splits = pd.DataFrame({"TCGA ID": patients, **split_cols})
    splits.to_csv(root / "pnas_splits.csv", index=False)
    spec = {
        "cohort": "pf_small",
        "survival": {
            "path": "all_dataset.csv",
            "patient": "TCGA ID",
            "time": "Survival months",
            "censorship": "censored",
        },
        "omics": [{"path": "same", "groups": {"cnv": {"suffix": "_cnv"}, "mut": {"columns": mut}}}],
        "images": {
            "kind": "rois",
            "dir": "rois",
            "patient_regex": PF_PATIENT_REGEX,
            "tile": tile if tile is not None else {"size": size // 2, "stride": size // 4},
        },
        "splits": {
            "kind": "file",
            "file": {
                "path": "pnas_splits.csv",
                "patient": "TCGA ID",
                "columns": "Randomization - {k}",
                "train": "Train",
                "test": "Test",
            },
        },
        "missing": "drop",
    }
    spec_path = root / "cohort.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return PathomicCohort(root, dataset, splits, cnv, mut, files, spec_path, spec)


@pytest.fixture
def pathomic(tmp_path: Path) -> PathomicCohort:
    return write_pathomic(tmp_path / "pf", without_images=(7,))


# --------------------------------------------------------------------------- reading shards back


def read_samples(directory: Path) -> list[dict]:
    """Every sample of a shard set, in shard order, read with webdataset (fields as bytes)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    urls = [str(directory / s["name"]) for s in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


def load_npy(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """name -> bytes of every file in a shard set (for byte-identical comparisons), except
    verified.json: a record of this copy's file sizes and mtimes, not content (its shard
    digests are the manifest's)."""
    return {
        p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != "verified.json"
    }


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything a failed build of `parent/name` may have left: the directory or its temp."""
    if not parent.exists():
        return []
    return sorted(
        p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")
    )


# --------------------------------------------------------------------------- whole-slide images


def slide_pixels(width: int, height: int, tissue_right: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8: H&E-like noise left of x = tissue_right, white glass after."""
    rng = np.random.default_rng(seed)
    pink = np.array([225.0, 150.0, 190.0]) * (1 + 0.05 * rng.standard_normal((height, width, 1)))
    pixels = np.where(np.arange(width)[None, :, None] < tissue_right, pink, 251.0)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def write_slide(path: Path, pixels: np.ndarray) -> None:
    """A tiled (128 px), zlib-compressed single-level TIFF that OpenSlide reads as generic-tiff."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        tif.write(pixels, tile=(128, 128), photometric="rgb", compression="zlib", metadata=None)
