"""km_split and plot_km: median split, log-rank p (checked by hand), atomic PNG."""

import math
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.km import HIGH_RISK, LOW_RISK, km_split, plot_km


def logrank_by_hand(time, event, group):
    """Mantel-Haenszel log-rank chi-square (1 dof) for group == True vs False."""
    observed_minus_expected = variance = 0.0
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d = ((time == t) & (event == 1)).sum()
        d1 = ((time == t) & (event == 1) & group).sum()
        observed_minus_expected += d1 - d * n1 / n
        if n > 1:
            variance += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    return stats.chi2.sf(observed_minus_expected**2 / variance, df=1)


def cohort(n=40, seed=0):
    rng = np.random.default_rng(seed)
    hazard = rng.normal(size=n)
    time = np.round(rng.exponential(np.exp(-hazard)) * 12, 1)  # months, some ties
    event = (rng.random(n) < 0.7).astype(int)
    return pd.DataFrame(
        {"patient": [f"P{i}" for i in range(n)], "hazard": hazard, "time": time, "event": event}
    )


def test_split_at_median_and_logrank_p():
    patients = cohort()
    groups, p = km_split(patients)
    median = patients["hazard"].median()
    assert (groups[patients["hazard"] > median] == HIGH_RISK).all()
    assert (groups[patients["hazard"] <= median] == LOW_RISK).all()
    assert (groups == HIGH_RISK).sum() == 20
    expected = logrank_by_hand(
        patients["time"].to_numpy(), patients["event"].to_numpy(), (groups == HIGH_RISK).to_numpy()
    )
    assert p == pytest.approx(expected, rel=1e-9)


def test_median_ties_go_to_low_risk_and_degenerate_split_gives_nan():
    patients = pd.DataFrame(
        {"hazard": [0.0, 0.0, 0.0, 1.0], "time": [1, 2, 3, 4], "event": [1, 1, 0, 1]}
    )
    groups, _ = km_split(patients)
    assert groups.tolist() == [LOW_RISK, LOW_RISK, LOW_RISK, HIGH_RISK]
    groups, p = km_split(patients.assign(hazard=0.5))
    assert (groups == LOW_RISK).all() and math.isnan(p)
    with pytest.raises(PgoError, match="missing column 'event'"):
        km_split(patients.drop(columns="event"))
    with pytest.raises(PgoError, match="hazard nan at index 1"):
        km_split(patients.assign(hazard=[0.0, np.nan, 1.0, 2.0]))
    with pytest.raises(PgoError, match="survival time -4.0 at index 3"):
        km_split(patients.assign(time=[1, 2, 3, -4]))


def test_plot_km_writes_png_atomically(tmp_path):
    patients = cohort(seed=1)
    path = tmp_path / "km.png"
    path.write_bytes(b"old")
    p = plot_km(patients, path, title="fold 0")
    assert p == km_split(patients)[1]
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert os.listdir(tmp_path) == ["km.png"]


def test_plot_km_failure_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "km.png"
    path.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)  # fault injection at the rename step
    with pytest.raises(OSError, match="disk full"):
        plot_km(cohort(), path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["km.png"]


def test_plot_km_missing_directory(tmp_path):
    with pytest.raises(PgoError, match="does not exist"):
        plot_km(cohort(), tmp_path / "nope" / "km.png")
    assert not (tmp_path / "nope").exists()
