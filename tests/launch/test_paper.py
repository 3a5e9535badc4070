"""launch/paper.py end to end at a reduced size (real commands, real training, no mocks).

What must hold: every stage leaves its outputs and a record; the report has Table 3's seven rows
with the paired columns against Exp. 1, Exp. 4 vs Exp. 2 and the smoothing table; a second run
skips every stage; a stage whose output was removed is redone alone (its downstream stages see
the same digests and skip); a changed option redoes the stages it shapes and those after them
whose inputs change; bad options are one `error:` line, exit 2.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["cohort", "atlas-split", "scgpt", "cells", "pretrain", "pretrain-nomix", "embed-rna",
          "smoothing", "table3", "report"]  # fmt: skip
# 60 patients, 2 folds, tens of steps, 1 epoch: about 3 minutes on 2 busy cores
SMALL = ["--patients", "60", "--atlas-cells-per-type", "30", "--folds", "2", "--fit-steps", "20",
         "--pretrain-steps", "10", "--epochs", "1", "--bulks", "30"]  # fmt: skip


def paper(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/paper.py", "--work", str(work), *args],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def statuses(stdout: str) -> dict[str, str]:
    """{stage: 'ran' | 'skipped'} from the lines '[stage] running ...' / '[stage] skipped: ...'."""
    found = {}
    for line in stdout.splitlines():
        m = re.match(r"\[([a-z0-9-]+)\] (running|skipped)", line)
        if m:
            found[m.group(1)] = "ran" if m.group(2) == "running" else "skipped"
    return found


@pytest.mark.parametrize(
    "args, words",
    [
        (["--folds", "0"], "--folds 0: valid 1..15"),
        (["--pretrain-batch", "3"], "--pretrain-batch 3: an even number"),
        (["--patients", "10"], "--patients 10: at least 40"),
        (["--mixed-cells", "2,0"], "--mixed-cells 2,0: a comma-separated list of positive"),
    ],
)
def test_bad_options_are_one_error_line(tmp_path: Path, args: list[str], words: str):
    proc = paper(tmp_path / "w", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_pipeline_runs_end_to_end_then_skips_and_redoes_only_what_changed(tmp_path: Path):
    work = tmp_path / "paper"
    first = paper(work, *SMALL)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert statuses(first.stdout) == dict.fromkeys(STAGES, "ran")

    # each stage's outputs
    manifest = json.loads((work / "shards/manifest.json").read_text())
    assert set(manifest["embeddings"]["fields"]) >= {"rna_emb", "rna_mlpa"}
    assert (work / "shards/rna_emb.npz").is_file()
    assert {"cells.h5ad", "cell_types.yaml", "truth.csv"} <= {
        p.name for p in (work / "cohort").iterdir()
    }
    assert {p.name for p in (work / "scgpt").iterdir()} >= {
        "args.json", "vocab.json", "best_model.pt", "fit.json",
    }  # fmt: skip
    assert json.loads((work / "scgpt/fit.json").read_text())
    for part in ("train", "heldout"):
        cells = json.loads((work / f"cells/{part}/manifest.json").read_text())
        assert cells["kind"] == "cells"
    for tag, mix in (("mix", True), ("nomix", False)):
        metrics = json.loads((work / f"pretrain/{tag}/metrics.json").read_text())
        assert metrics["step"] == 10 and metrics["done"] and metrics["mix"] is mix
        assert (work / f"pretrain/{tag}/mlp_a.pt").is_file()
    smoothing = json.loads((work / "smoothing/smoothing.json").read_text())
    assert set(smoothing["l1_mean"]) == {
        "prior", "probe scGPT", "head mix", "head no-mix", "probe MLP-A mix", "probe MLP-A no-mix",
    }  # fmt: skip
    assert all(0.0 <= v <= 2.0 for v in smoothing["l1_mean"].values())
    assert smoothing["paired"]["head mix vs head no-mix"]["n"] == 30
    by_cells = smoothing["by_cells"]
    assert [row["cells"] for row in by_cells] == [1, 2, 5, 10, 20, 40]
    for row in by_cells:
        assert set(row["l1_mean"]) == {
            "prior", "head mix", "head no-mix", "probe scGPT", "probe counts",
        }  # fmt: skip
        assert all(0.0 <= v <= 2.0 for v in row["l1_mean"].values())
        assert row["head mix vs head no-mix"]["n"] == 30
    # one cell is one type (truth one-hot, prior L1 near 2); forty cells approach the mean
    assert by_cells[0]["l1_mean"]["prior"] > 1.5 > by_cells[-1]["l1_mean"]["prior"]
    assert by_cells[0]["expressed_genes"] < by_cells[-1]["expressed_genes"]
    summary = json.loads((work / "table3/sweep_summary.json").read_text())
    assert len(summary["runs"]) == 7
    assert all(run["n_folds"] == 2 for run in summary["runs"].values())
    assert set(summary["paired"]) == set(summary["runs"]) - {"exp1-snn-concat"}
    for name, p in summary["paired"].items():
        assert p["n"] == 2 and p["folds"] == [0, 1], name
    config = (work / "table3/exp4-scgpt-smooth-concat/config.yaml").read_text()
    assert "rna_encoder: scgpt_mlpa" in config and "arch: lcnet_050" in config
    assert str(work / "pretrain/mix/mlp_a.pt") in config

    # the report: seven Table 3 rows, the paired columns against Exp. 1, the paper's numbers
    text = (work / "paper.md").read_text()
    assert text in first.stdout
    table3 = text.split("## Smoothing")[0]
    rows = [line for line in table3.splitlines() if re.match(r"\| (\d|CoxPH) \|", line)]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2", "3", "4", "5", "6", "CoxPH"]
    assert "| reference |" in rows[0] and "0.826 ± 0.010" in rows[0]
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert re.fullmatch(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", cells[4]), row
        assert re.fullmatch(r"\d/2", cells[5]) and cells[7] == "2", row
    assert "0.848 ± 0.014" in rows[5]
    assert "Exp. 4 (scGPT w/ smooth) vs Exp. 2" in text and "held-out pseudo-bulks" in text
    k_rows = text.split("## Fraction error against the number of cells mixed")[1]
    assert [line.split("|")[1].strip() for line in k_rows.splitlines() if
            re.match(r"\| \d+ \|", line)] == ["1", "2", "5", "10", "20", "40"]  # fmt: skip
    paper_json = json.loads((work / "paper.json").read_text())
    assert paper_json["exp4_vs_exp2"]["n"] == 2
    for stage in STAGES:
        record = json.loads((work / f"stages/{stage}.json").read_text())
        assert record["outputs"] and record["seconds"] >= 0
        assert re.search(rf"\| {stage} \| ran \| \d+ \|", first.stdout)
    where = json.loads((work / "stages/pretrain.json").read_text())["ran_on"]
    assert where.startswith(("Slurm", "local"))

    # a second run skips every stage
    second = paper(work, *SMALL)
    assert second.returncode == 0, second.stderr[-3000:]
    assert statuses(second.stdout) == dict.fromkeys(STAGES, "skipped")
    assert text in second.stdout

    # a removed output: that stage alone is redone (same bytes, so the report still holds)
    (work / "smoothing/smoothing.json").unlink()
    third = paper(work, *SMALL)
    assert third.returncode == 0, third.stderr[-3000:]
    assert statuses(third.stdout) == dict.fromkeys(STAGES, "skipped") | {"smoothing": "ran"}
    assert "output smoothing/smoothing.json missing" in third.stdout
    assert json.loads((work / "smoothing/smoothing.json").read_text()) == smoothing

    # a changed output file is not trusted either; a changed option redoes what it shapes
    (work / "pretrain/nomix/head.pt").write_bytes(b"tampered")
    fourth = paper(work, *SMALL[:-1], "20")  # --bulks 20
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    redone = {"pretrain-nomix": "ran", "smoothing": "ran", "report": "ran"}
    assert statuses(fourth.stdout) == dict.fromkeys(STAGES, "skipped") | redone
    assert "output pretrain/nomix/head.pt changed" in fourth.stdout
    assert (
        json.loads((work / "smoothing/smoothing.json").read_text())["paired"][
            "head mix vs head no-mix"
        ]["n"]
        == 20
    )
