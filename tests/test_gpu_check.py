"""benchmarks/gpu_check.py in its tiny CPU mode: every row of the table, and an exact resume.

The GPU run (default sizes, bf16) needs a lent CUDA machine; `--device cpu --tiny` runs the same
functions at tiny sizes in fp32, so the table's logic, the plain-loop baseline, the scGPT and
loader rows, embed-tiles + ABMIL (row g) and the stop/resume comparison are checked here. No
timing is asserted (the project's benchmark rule); on CPU fp32 the resumed fold must give the same
predictions.csv bytes, and row g's two fp32 embed-tiles runs the same features.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_tiny_cpu_run_prints_every_row_and_resumes_to_identical_predictions(tmp_path):
    out = tmp_path / "json"
    proc = _run(
        "--device", "cpu", "--tiny", "--out", str(tmp_path / "work"), "--json", str(out),
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stdout = proc.stdout
    assert stdout.startswith("device: cpu")

    result = json.loads(out.read_text())
    rows = {}
    for row in result["rows"]:
        rows.setdefault(row["key"], []).append(row)
    assert sorted(rows) == ["a", "b", "c", "d", "e", "g"]
    assert len(rows["e"]) == len(result["sizes"]["loader_workers"]) == 1

    # the final table: a header and one line per row, each with its ratio and target
    table = stdout[stdout.rindex("\ndevice: cpu") :].splitlines()
    assert table[2].startswith("row ") and "baseline" in table[2] and "peak GPU mem" in table[2]
    for key, line in zip("abcdegg", table[3:10], strict=True):
        assert line.startswith(f"{key}. "), line
        assert "n/a (cpu)" in line
    # each row was printed as soon as it was measured (once), in the execution order a, b, d, e, g, c
    marks = [stdout.index(f"\n[{key}] ") for key in "abdegc"]
    assert marks == sorted(marks)
    assert stdout.count("\n[g] ") == 2

    for key in "abde":
        (row,) = rows[key]
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["verdict"] in ("yes", "NO")

    a = rows["a"][0]["data"]
    assert a["project_img_s"] > 0 and a["plain_img_s"] > 0
    assert set(rows["b"][0]["data"]["seconds"]) == {"none", "rho"}
    d = rows["d"][0]["data"]
    assert set(d["seconds"]) == {"ours", "embed_data"} and d["samples"] == 24
    e = rows["e"][0]["data"]
    assert e["workers"] == 2 and e["consumption_units_s"] == pytest.approx(a["project_img_s"])
    assert e["passes"][0]["units"] > 0

    (c,) = rows["c"]
    data = c["data"]
    assert data["first_call"]["status"] == "stopped"
    assert data["first_call"]["step"] == data["stop_after_steps"] < data["steps"]
    assert data["identical"] is True and data["max_abs_hazard_diff"] == 0.0
    assert c["verdict"] == "yes" and "identical yes" in c["ours"]
    assert data["control"] is None  # only run when the predictions differ

    embed, cost = rows["g"]
    g = embed["data"]
    # tiny: the "bf16" call runs in fp32 too, so its speed is skipped and the features identical
    assert g["precision"] == "fp32" and g["skipped"] is True
    assert embed["ratio"] is None and embed["verdict"] == "skipped; agreement yes"
    assert "skipped" in embed["ours"] and "resnet10t" in embed["name"]
    assert g["agreement"]["identical"] is True
    assert g["agreement"]["cos_min"] == 1.0 and g["agreement"]["cos_median"] == 1.0
    assert g["agreement"]["tiles"] == 120  # row e's 60 x 2 cohort, reused
    assert all(v > 0 for v in g["tiles_s"].values()) and set(g["tiles_s"]) == {"fp32", "fast"}
    assert all(v > 0 for v in g["forward_tiles_s"].values())
    assert g["weights"].endswith("resnet10t_random.pth")
    c = cost["data"]
    assert c["max_tiles"] == 2 and set(c["seconds_per_epoch"]) == {"e2e", "abmil"}
    assert set(c["walls"]["e2e"]) == set(c["walls"]["abmil"]) == {"1", "3"}  # JSON keys
    assert cost["ratio"] is not None and cost["ratio"] > 0
    assert cost["verdict"] in ("yes", "NO") and cost["target"].startswith(">= 50")


def test_without_cuda_it_refuses_in_one_line():
    proc = _run(timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "needs a CUDA GPU" in proc.stderr and "--device cpu --tiny" in proc.stderr
