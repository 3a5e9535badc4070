"""The image branch at lab scale end to end on whole-slide images, every step the command a user runs:

    pgo-shards build (synthetic pyramidal slides, OpenSlide, tissue tiles)
    -> pgo-shards embed-tiles (a frozen timm backbone from a weights file the test saves)
    -> launch/submit.py model=image_abmil (attention MIL on the local executor, 2 folds)
    -> launch/heatmaps.py (attention over each test slide's thumbnail)

Checked: every test patient's tiles carry one attention weight each, summing to 1; each heatmap's
top tile is the tile attention.csv weighs most; heatmaps.json lists every test slide.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.folds import open_fold
from hpc_pgo.data.synthetic_slides import write_cohort
from hpc_pgo.data.tile_features import read_tile_features
from hpc_pgo.models.image import create_backbone
from tests.launch.conftest import REPO_ROOT

SUBMIT = REPO_ROOT / "launch" / "submit.py"
HEATMAPS = REPO_ROOT / "launch" / "heatmaps.py"
ARCH = "resnet10t"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return done


@pytest.mark.slow
def test_slides_embed_abmil_and_heatmaps_end_to_end(tmp_path: Path, job_env) -> None:
    data = tmp_path / "cohort"
    write_cohort(data, slides=14, width=1536, height=1024, patients=12, seed=5, quality=80)
    spec = yaml.safe_load((data / "cohort.yaml").read_text())
    spec["splits"] = {"kind": "random", "n": 2, "test_fraction": 0.34, "seed": 0}
    (data / "cohort.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shards = tmp_path / "shards"
    build_cohort(data / "cohort.yaml", shards, workers=1, progress=False)

    torch.manual_seed(0)
    weights = tmp_path / f"{ARCH}.pt"
    torch.save(create_backbone(ARCH).state_dict(), weights)
    embed = ["-m", "hpc_pgo.data", "embed-tiles", str(shards), "--arch", ARCH, "--weights",
             str(weights), "--input-size", "64", "--no-progress"]  # fmt: skip
    assert "computed 1 of 1 shards" in run(*embed, cwd=tmp_path).stdout
    manifest = json.loads((shards / "manifest.json").read_text())
    features = read_tile_features(shards, manifest)
    assert manifest["tile_features"]["backbone"]["weights"] == weights.name

    run_dir = tmp_path / "run"
    run(
        str(SUBMIT), "folds=0-1", f"data.shards={shards}", "data.n_splits=2",
        "data.modalities=[genomic,image]", "model=image_abmil", "train.epochs=2",
        "train.batch_size=2", "train.num_workers=0", "model.image.bag.max_tiles=8",
        "model.image.bag.hidden=16", "model.image.bag.attention=8", f"run_dir={run_dir}",
        cwd=tmp_path,
    )  # fmt: skip

    for fold in (0, 1):
        test = sorted(open_fold(shards, fold).test)
        attention = pd.read_csv(run_dir / f"fold_{fold}" / "attention.csv")
        assert sorted(attention["patient"].unique()) == test
        for patient, rows in attention.groupby("patient"):
            keys = [f"{patient}__{u}" for u in rows["unit"]]
            assert sorted(keys) == sorted(features.keys(patient))  # every tile, once
            np.testing.assert_allclose(rows["attention"].sum(), 1.0, rtol=1e-5)

    run(str(HEATMAPS), str(run_dir), "--slides", str(data / "slides"), cwd=tmp_path)
    for fold in (0, 1):
        attention = pd.read_csv(run_dir / f"fold_{fold}" / "attention.csv")
        index = json.loads((run_dir / "heatmaps" / f"fold_{fold}" / "heatmaps.json").read_text())
        entries = index["slides"]
        slides_of = {
            (p, u.rsplit("_y", 1)[0])
            for p, u in zip(attention["patient"], attention["unit"], strict=True)
        }
        assert {(e["patient"], Path(e["slide"]).stem) for e in entries} == slides_of
        for entry in entries:
            stem = Path(entry["slide"]).stem
            rows = attention[
                (attention["patient"] == entry["patient"])
                & attention["unit"].str.startswith(stem + "_y")
            ]
            assert entry["n_tiles"] == len(rows)
            top = rows.loc[rows["attention"].idxmax()]
            assert entry["top"][0]["unit"] == top["unit"]
            png = run_dir / "heatmaps" / entry["png"]
            assert png == run_dir / "heatmaps" / f"fold_{fold}" / entry["patient"] / f"{stem}.png"
            assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
