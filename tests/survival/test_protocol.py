"""The evaluation protocol: patient hazards, fold C-index, fold summary, predictions reader."""

import math

import numpy as np
import pandas as pd
import pytest

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.concordance import concordance
from hpc_pgo.survival.protocol import (
    fold_cindex,
    patient_hazards,
    read_predictions,
    summarize_cindex,
    summarize_folds,
)


def units(rows):
    return pd.DataFrame(rows, columns=["patient", "unit", "hazard", "time", "event"])


# Patient A: t=1 died, units 2 and -1 (mean 0.5); B: t=2 died, units 0, 0 (mean 0);
# C: t=3 censored, one unit 1.
FOLD = units(
    [
        ("A", "a1", 2.0, 1.0, 1),
        ("A", "a2", -1.0, 1.0, 1),
        ("B", "b1", 0.0, 2.0, 1),
        ("B", "b2", 0.0, 2.0, 1),
        ("C", "c1", 1.0, 3.0, 0),
    ]
)


def test_patient_hazard_is_mean_over_units():
    patients = patient_hazards(FOLD)
    assert patients["patient"].tolist() == ["A", "B", "C"]
    assert patients["hazard"].tolist() == [0.5, 0.0, 1.0]
    assert patients["time"].tolist() == [1.0, 2.0, 3.0]
    assert patients["event"].tolist() == [1, 1, 0]
    assert patients["n_units"].tolist() == [2, 2, 1]


def test_fold_cindex_is_over_patients_not_units():
    # Patient level: (A,B) 0.5 > 0 concordant; (A,C) 0.5 < 1 discordant; (B,C) 0 < 1
    # discordant -> C = 1/3. Unit level would differ (it counts a1, a2, b1, b2 separately).
    assert fold_cindex(FOLD) == pytest.approx(1 / 3)
    unit_level = concordance(FOLD["time"], FOLD["hazard"], FOLD["event"])
    assert unit_level != pytest.approx(1 / 3)


def test_patient_with_conflicting_time_is_an_error():
    bad = FOLD.copy()
    bad.loc[1, "time"] = 5.0
    with pytest.raises(
        PgoError, match=r"patient 'A' has units with different time values \[1.0, 5.0\]"
    ):
        patient_hazards(bad, where="fold 2")


def test_summary_of_three_folds():
    s = summarize_cindex({2: 0.8, 0: 0.6, 1: 0.7})
    # mean 0.7; sample std sqrt((0.01 + 0 + 0.01) / 2) = 0.1; SEM 0.1 / sqrt(3);
    # t(0.975, 2) = 4.302652729911275 (t table) -> ci95 = 0.24841.
    assert s["mean"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(0.1)
    assert s["ci95"] == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert s["per_fold"] == {0: 0.6, 1: 0.7, 2: 0.8}
    assert list(s["per_fold"]) == [0, 1, 2]
    assert s["n_folds"] == 3


def test_summary_of_fifteen_folds_uses_t_with_14_dof():
    c = np.linspace(0.6, 0.74, 15)
    s = summarize_cindex(dict(enumerate(c)))
    # t(0.975, 14) = 2.1447866879169273 (t table)
    assert s["ci95"] == pytest.approx(2.1447866879169273 * np.std(c, ddof=1) / math.sqrt(15))


def test_summary_edge_cases():
    one = summarize_cindex({4: 0.65})
    assert one["mean"] == 0.65 and one["n_folds"] == 1
    assert math.isnan(one["std"]) and math.isnan(one["ci95"])
    with pytest.raises(PgoError, match="at least one fold"):
        summarize_cindex({})
    with pytest.raises(PgoError, match="fold 1: C-index nan"):
        summarize_cindex({0: 0.6, 1: float("nan")})
    with pytest.raises(PgoError, match="fold 0: C-index 1.5"):
        summarize_cindex({0: 1.5})


def test_summarize_folds_from_predictions():
    other = FOLD.assign(hazard=-FOLD["time"])  # perfect ranking -> C = 1
    s = summarize_folds({0: FOLD, 1: other})
    assert s["per_fold"] == {0: pytest.approx(1 / 3), 1: 1.0}
    assert s["mean"] == pytest.approx((1 / 3 + 1) / 2)


def test_fold_without_death_names_the_fold():
    with pytest.raises(PgoError, match="^fold 5: no comparable pair"):
        summarize_folds({5: FOLD.assign(event=0)})


def test_read_predictions_round_trip_keeps_ids_as_strings(tmp_path):
    path = tmp_path / "predictions.csv"
    df = FOLD.assign(patient=["007", "007", "NA", "NA", "TCGA-A3-3307"])
    df.to_csv(path, index=False)
    back = read_predictions(path)
    assert back["patient"].tolist() == ["007", "007", "NA", "NA", "TCGA-A3-3307"]
    pd.testing.assert_frame_equal(back[["hazard", "time"]], df[["hazard", "time"]])
    assert back["event"].tolist() == [1, 1, 1, 1, 0]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.drop(columns="event"), "missing column 'event'"),
        (lambda d: d.assign(time=[1.0, 1.0, -2.0, -2.0, 3.0]), "line 4: survival time -2.0"),
        (lambda d: d.assign(event=[1, 1, 1, 1, 2]), "line 6: event 2 "),
        (lambda d: d.assign(hazard=[0.0, "x", 0, 0, 0]), "line 3: column 'hazard' value 'x'"),
        (lambda d: d.assign(hazard=[0.0, None, 0, 0, 0]), "line 3: column 'hazard'"),
        (
            lambda d: d.assign(unit=["a1", "a1", "b1", "b2", "c1"]),
            "line 3: unit 'a1' of patient 'A' appears twice",
        ),
        (lambda d: d.assign(patient=["A", "A", "", "B", "C"]), "line 4: column 'patient' is empty"),
    ],
)
def test_read_predictions_errors_name_file_and_line(tmp_path, edit, needle):
    path = tmp_path / "fold_3" / "predictions.csv"
    path.parent.mkdir()
    edit(FOLD.copy()).to_csv(path, index=False)
    with pytest.raises(PgoError) as info:
        read_predictions(path)
    message = str(info.value)
    assert message.startswith(str(path)) and needle in message and "\n" not in message


def test_read_predictions_missing_or_empty_file(tmp_path):
    with pytest.raises(PgoError, match="predictions file not found"):
        read_predictions(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(PgoError, match="not a readable CSV"):
        read_predictions(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("patient,unit,hazard,time,event\n")
    with pytest.raises(PgoError, match="no prediction rows"):
        read_predictions(tmp_path / "header.csv")
