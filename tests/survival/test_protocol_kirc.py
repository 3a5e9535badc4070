"""The protocol end to end on real TCGA-KIRC survival data, with age as the predicted hazard."""

import numpy as np
import pandas as pd
import pytest

from hpc_pgo.survival.concordance import concordance
from hpc_pgo.survival.km import plot_km
from hpc_pgo.survival.protocol import patient_hazards, read_predictions, summarize_folds
from tests.conftest import KIRC_TABLE

KIRC = KIRC_TABLE
pytestmark = pytest.mark.usefixtures("kirc_table")


@pytest.fixture(scope="module")
def slides():
    cols = ["case_id", "slide_id", "survival_months", "censorship", "age"]
    return pd.read_csv(KIRC, usecols=cols)


def test_fifteen_folds_with_age_as_hazard(slides, tmp_path):
    # One unit per slide (5 patients have 2). Unit hazards age -/+ 1 on two-slide patients,
    # so the patient mean is exactly the age; death observed = 1 - censorship.
    units = pd.DataFrame(
        {
            "patient": slides["case_id"],
            "unit": slides["slide_id"],
            "hazard": slides["age"]
            + np.where(slides.duplicated("case_id"), 1.0, 0.0)
            - np.where(slides.duplicated("case_id", keep="last"), 1.0, 0.0),
            "time": slides["survival_months"],
            "event": 1 - slides["censorship"],
        }
    )
    patients = units["patient"].unique()
    rng = np.random.default_rng(0)
    preds = {}
    for k in range(15):
        test = rng.choice(patients, size=len(patients) // 5, replace=False)
        path = tmp_path / f"fold_{k}" / "predictions.csv"
        path.parent.mkdir()
        units[units["patient"].isin(test)].to_csv(path, index=False)
        preds[k] = read_predictions(path)

    summary = summarize_folds(preds)
    assert summary["n_folds"] == 15 and list(summary["per_fold"]) == list(range(15))
    # Older patients die sooner in KIRC: age is prognostic, so C > 0.5 on average.
    assert 0.5 < summary["mean"] < 1.0 and summary["std"] > 0 and summary["ci95"] > 0

    fold0 = patient_hazards(preds[0])
    two_slides = fold0[fold0["n_units"] == 2]
    ages = slides.drop_duplicates("case_id").set_index("case_id")["age"]
    assert np.allclose(fold0["hazard"], ages.loc[fold0["patient"]].to_numpy())
    direct = concordance(fold0["time"], fold0["hazard"], fold0["event"])
    assert summary["per_fold"][0] == direct
    assert len(two_slides) <= 5

    p = plot_km(fold0, tmp_path / "km.png", title="TCGA-KIRC fold 0, age")
    assert 0.0 <= p <= 1.0 and (tmp_path / "km.png").stat().st_size > 1000
