"""Adversarial cases of the run report's statistics (issue 10): what a paper-facing number must
survive. The class kept here: a patient tested in several of the overlapping random splits is
ONE observation in the Kaplan-Meier curves and the log-rank test, never one per fold.

References are independent: lifelines' logrank_test on groups built by hand (or by numpy from
the documented rule), never hpc_pgo's own helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test

from hpc_pgo.errors import PgoError
from hpc_pgo.launch.report import write_report
from hpc_pgo.survival.km import HIGH_RISK, LOW_RISK, km_split, plot_km, risk_groups


def fold_table(rows: list[tuple[str, float, float, int]]) -> pd.DataFrame:
    """A fold's test patients: (patient, hazard, time, event) rows."""
    return pd.DataFrame(rows, columns=["patient", "hazard", "time", "event"])


def lifelines_p(time, event, high) -> float:
    """The reference: lifelines' log-rank test of high vs not high (numpy arrays)."""
    time, event, high = np.asarray(time, float), np.asarray(event, int), np.asarray(high, bool)
    return float(
        logrank_test(
            time[high], time[~high], event_observed_A=event[high], event_observed_B=event[~high]
        ).p_value
    )


# --- risk_groups: each patient once -----------------------------------------------------------

# Three folds over 6 patients; A, B and C are tested twice or three times.
# Survival: A (2, died), B (4, died), C (6, died), D (8, censored), E (10, died), F (12, censored).
FOLDS = {
    0: fold_table([("A", 3.0, 2, 1), ("B", 2.0, 4, 1), ("C", 1.0, 6, 1), ("D", 0.0, 8, 0)]),
    1: fold_table([("A", 5.0, 2, 1), ("C", 1.0, 6, 1), ("E", 0.0, 10, 1)]),
    2: fold_table([("A", 0.0, 2, 1), ("B", 2.0, 4, 1), ("F", 1.0, 12, 0)]),
}
# By hand: fold 0 median 1.5, std sqrt(1.25) = 1.118: z = A +1.342, B +0.447, C -0.447, D -1.342.
# fold 1 median 1, std sqrt(14/3) = 2.160: z = A +1.852, C 0, E -0.463.
# fold 2 median 1, std sqrt(2/3) = 0.816: z = A -1.225, B +1.225, F 0.
# Means: A +0.656 (high), B +0.836 (high), C -0.224 (low), D -1.342, E -0.463, F 0 (low: ties low).
HAND_GROUPS = {"A": HIGH_RISK, "B": HIGH_RISK, "C": LOW_RISK, "D": LOW_RISK, "E": LOW_RISK,
               "F": LOW_RISK}  # fmt: skip
HAND_TIME = {"A": 2, "B": 4, "C": 6, "D": 8, "E": 10, "F": 12}
HAND_EVENT = {"A": 1, "B": 1, "C": 1, "D": 0, "E": 1, "F": 0}


def test_duplicates_across_folds_are_counted_once():
    table = risk_groups(FOLDS)
    assert len(table) == 6  # 10 fold-patient rows, 6 patients
    assert table["patient"].tolist() == ["A", "B", "C", "D", "E", "F"]
    assert dict(zip(table["patient"], table["n_folds"], strict=True)) == {
        "A": 3, "B": 2, "C": 2, "D": 1, "E": 1, "F": 1,
    }  # fmt: skip
    assert int(table["n_folds"].sum()) == sum(len(f) for f in FOLDS.values())
    assert dict(zip(table["patient"], table["group"], strict=True)) == HAND_GROUPS
    assert table.set_index("patient").loc["A", "position"] == pytest.approx(
        (3.0 - 1.5) / np.sqrt(1.25) / 3 + 4.0 / np.sqrt(14 / 3) / 3 - 1.0 / np.sqrt(2 / 3) / 3
    )


def test_pvalue_is_lifelines_logrank_on_the_hand_built_unique_patients(tmp_path):
    table = risk_groups(FOLDS)
    p = plot_km(table, tmp_path / "km.png", groups=table["group"])
    patients = sorted(HAND_GROUPS)
    expected = lifelines_p(
        [HAND_TIME[x] for x in patients],
        [HAND_EVENT[x] for x in patients],
        [HAND_GROUPS[x] == HIGH_RISK for x in patients],
    )
    assert p == pytest.approx(expected, rel=1e-12)


def test_pooled_rows_give_another_p_and_are_refused():
    pooled = pd.concat(FOLDS.values(), ignore_index=True)
    # What the old report computed: every fold-patient row as an observation.
    high = pooled["hazard"] > pooled["hazard"].median()
    pooled_p = lifelines_p(pooled["time"], pooled["event"], high)
    table = risk_groups(FOLDS)
    unique_p = lifelines_p(table["time"], table["event"], table["group"] == HIGH_RISK)
    assert pooled_p != pytest.approx(unique_p, rel=0.01)  # 0.0188 pooled, 0.0177 unique
    with pytest.raises(PgoError, match="patient 'A' appears 3 times; valid: one row per patient"):
        km_split(pooled)


def test_one_fold_gives_the_median_split():
    fold = FOLDS[0]
    groups, p = km_split(fold)
    table = risk_groups({0: fold})
    assert table["group"].tolist() == groups.tolist()
    assert plot_km_p(table) == pytest.approx(p)


def plot_km_p(table: pd.DataFrame) -> float:
    from hpc_pgo.survival.km import logrank_p

    return logrank_p(table, table["group"])


def test_a_patient_whose_outcome_differs_between_folds_is_refused():
    folds = {**FOLDS, 2: fold_table([("A", 0.0, 3, 1), ("B", 2.0, 4, 1)])}
    with pytest.raises(PgoError, match=r"patient 'A' has different time values across folds "
                                       r"\(fold 0: 2, fold 1: 2, fold 2: 3\)"):  # fmt: skip
        risk_groups(folds)
    twice = {0: fold_table([("A", 1.0, 2, 1), ("A", 2.0, 2, 1), ("B", 0.0, 3, 0)])}
    with pytest.raises(PgoError, match="fold 0: patient 'A' appears 2 times"):
        risk_groups(twice)
    with pytest.raises(PgoError, match="no fold"):
        risk_groups({})


# --- the report: overlapping random splits, as the demo's -------------------------------------


def write_overlapping_folds(run_dir, n_patients=60, n_folds=15, seed=0) -> dict[int, pd.DataFrame]:
    """15 random 80/20 splits of 60 patients (a patient is tested in ~3 folds), 2 units each;
    hazards follow the true risk with fold noise. Returns each fold's unit table."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n_patients)
    time = np.round(rng.exponential(np.exp(-risk)) * 24, 2) + 0.1
    event = (rng.random(n_patients) < 0.75).astype(int)
    ids = np.array([f"P{i:03d}" for i in range(n_patients)])
    folds = {}
    for k in range(n_folds):
        test = np.sort(rng.choice(n_patients, size=n_patients // 5, replace=False))
        noise = rng.normal(scale=0.5, size=test.size)
        rows = [
            {"patient": ids[i], "unit": f"{ids[i]}_{u}", "hazard": risk[i] + noise[j] + 0.1 * u,
             "time": time[i], "event": event[i]}
            for j, i in enumerate(test) for u in range(2)
        ]  # fmt: skip
        out = run_dir / f"fold_{k}"
        out.mkdir(parents=True)
        folds[k] = pd.DataFrame(rows)
        folds[k].to_csv(out / "predictions.csv", index=False)
    return folds


def reference_groups(units: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """The documented rule, by numpy: per fold z = (h - median) / std(ddof 0) of the patients'
    mean unit hazards; per patient the mean z; high when > 0."""
    positions: dict[str, list[float]] = {}
    outcome = {}
    for df in units.values():
        per = df.groupby("patient").agg(
            h=("hazard", "mean"), t=("time", "first"), e=("event", "first")
        )
        z = (per["h"] - np.median(per["h"])) / per["h"].to_numpy().std()
        for patient in per.index:
            positions.setdefault(patient, []).append(z[patient])
            outcome[patient] = (per.loc[patient, "t"], per.loc[patient, "e"])
    patients = sorted(positions)
    return pd.DataFrame(
        {
            "patient": patients,
            "high": [np.mean(positions[p]) > 0 for p in patients],
            "time": [outcome[p][0] for p in patients],
            "event": [outcome[p][1] for p in patients],
            "n_folds": [len(positions[p]) for p in patients],
        }
    )


def test_report_tests_unique_patients_not_pooled_rows(tmp_path):
    units = write_overlapping_folds(tmp_path)
    summary = write_report(tmp_path)

    ref = reference_groups(units)
    rows = sum(df["patient"].nunique() for df in units.values())
    assert rows == 15 * 12 and len(ref) < rows and ref["n_folds"].max() >= 4  # overlap is real
    km = summary["km"]
    assert km["patients"] == len(ref) and km["rows"] == rows and km["folds"] == 15
    assert km["high_risk"] == int(ref["high"].sum())
    assert km["low_risk"] == len(ref) - int(ref["high"].sum())
    expected = lifelines_p(ref["time"], ref["event"], ref["high"])
    assert km["logrank_p"] == pytest.approx(expected, rel=1e-9)
    assert summary["km_logrank_p"] == km["logrank_p"]

    # The pooled number (one row per fold and patient, split at the pooled median) that the
    # report used to print is a different, much smaller p: the duplicates inflate the evidence.
    per_fold = [
        df.groupby("patient").agg(
            hazard=("hazard", "mean"), time=("time", "first"), event=("event", "first")
        )
        for df in units.values()
    ]
    pooled = pd.concat(per_fold, ignore_index=True)
    pooled_p = lifelines_p(
        pooled["time"], pooled["event"], pooled["hazard"] > pooled["hazard"].median()
    )
    assert pooled_p < km["logrank_p"] / 10

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["km"]["patients"] == len(ref) and "unique test patient" in saved["km"]["rule"]
    md = (tmp_path / "summary.md").read_text()
    assert (
        f"Kaplan-Meier: {len(ref)} unique test patients (each once; {rows} fold-patient rows" in md
    )
    assert (tmp_path / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_refuses_a_patient_with_two_outcomes(tmp_path):
    units = write_overlapping_folds(tmp_path, n_folds=4)
    patient = units[0]["patient"].iloc[0]
    rows = units[0][units[0]["patient"] == patient].assign(time=999.0)
    fold1 = pd.concat([units[1][units[1]["patient"] != patient], rows], ignore_index=True)
    fold1.to_csv(tmp_path / "fold_1" / "predictions.csv", index=False)
    with pytest.raises(PgoError, match=f"patient '{patient}' has different time values"):
        write_report(tmp_path)


# --- the report: rows of patients the fold did not test -----------------------------------------


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    """A real `pgo-shards demo` shard set: 40 patients, 15 random splits of 8 test patients."""
    from hpc_pgo.data.cli import main as pgo_shards

    out = tmp_path_factory.mktemp("shards") / "demo"
    assert pgo_shards(["demo", "--out", str(out), "--patients", "40", "--rois", "1",
                       "--image-size", "16", "--no-progress", "--workers", "1"]) == 0  # fmt: skip
    return out


def write_test_folds(run_dir: Path, shards: Path, folds=(0, 1, 2)) -> dict:
    """A run directory on `shards` (its config.yaml) whose folds predict exactly their test
    patients (from the manifest), 1 unit each, hazard = -time + noise. Returns the manifest."""
    from hpc_pgo.config import compose, save_config

    save_config(compose([f"data.shards={shards}", f"folds={list(folds)}", f"run_dir={run_dir}"]),
                run_dir)  # fmt: skip
    manifest = json.loads((shards / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    for k in folds:
        rows = [
            {"patient": p, "unit": f"{p}_0", "hazard": -info["time"] + rng.normal(0, 20),
             "time": info["time"], "event": info["event"]}
            for p in manifest["splits"]["folds"][k]["test"]
            for info in [manifest["patients"][p]]
        ]  # fmt: skip
        (run_dir / f"fold_{k}").mkdir(parents=True)
        pd.DataFrame(rows).to_csv(run_dir / f"fold_{k}" / "predictions.csv", index=False)
    return manifest


@pytest.mark.parametrize("who", ["a-train-patient", "a-patient-of-no-split"])
def test_a_prediction_row_of_a_patient_the_fold_did_not_test_fails_that_fold(
    tiny_shards, tmp_path, capsys, who
):
    """Issue 21: the report scored every row of predictions.csv: a train patient (or anyone)
    appended to a fold changed its C-index, exit 0. The rows are checked against that fold's
    test split in the shard set's manifest: the fold is failed, naming the file, the line and
    the patient (exit 3, as for any failed fold); the other folds are scored as before."""
    from tests.launch.conftest import REPO_ROOT
    from tests.launch.test_submit_cli import load_main

    manifest = write_test_folds(tmp_path, tiny_shards)
    main = load_main(REPO_ROOT / "launch" / "report.py")
    assert main([str(tmp_path)]) == 0
    before = json.loads((tmp_path / "summary.json").read_text())["c_index"]["per_fold"]
    capsys.readouterr()

    file = tmp_path / "fold_1" / "predictions.csv"
    df = pd.read_csv(file)
    split = manifest["splits"]["folds"][1]
    patient = split["train"][0] if who == "a-train-patient" else "DEMO-9999"
    info = manifest["patients"].get(patient, {"time": 1.0, "event": 1})
    # a high hazard for an early death: the fold's C-index moves if the row is scored
    row = {"patient": patient, "unit": f"{patient}_0", "hazard": 1e3, "time": info["time"],
           "event": info["event"]}  # fmt: skip
    pd.concat([df, pd.DataFrame([row])], ignore_index=True).to_csv(file, index=False)

    assert main([str(tmp_path)]) == 3
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["incomplete: fold_1: failed"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    what = "a train patient of that fold" if who == "a-train-patient" else "in neither split"
    assert summary["failed_folds"]["1"].startswith(
        f"{file}, line {len(df) + 2}: patient {patient!r} is not a test patient of fold 1 "
        f"(shard set {tiny_shards}: {what}"
    )
    assert summary["failed_folds"]["1"].endswith(
        f"1 such row(s)); valid: rows of the fold's {len(split['test'])} test patients only"
    )
    assert summary["c_index"]["per_fold"] == {k: v for k, v in before.items() if k != "1"}
    assert f"fold 1 FAILED: {file}, line" in (tmp_path / "summary.md").read_text()
