"""Paired per-fold comparison: against scipy's paired t interval, an exact Wilcoxon case, and a
case where an unpaired reading would reach the opposite conclusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.paired import paired_difference


def test_matches_scipy_paired_t_interval_and_wilcoxon():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.55, 0.75, 15)
    cand = ref + rng.normal(0.01, 0.02, 15)
    got = paired_difference(dict(enumerate(cand)), dict(enumerate(ref)))
    interval = stats.ttest_rel(cand, ref).confidence_interval(0.95)
    assert got["n"] == 15 and got["folds"] == list(range(15))
    assert got["mean"] == pytest.approx(float(np.mean(cand - ref)))
    assert got["mean"] - got["ci95"] == pytest.approx(interval.low)
    assert got["mean"] + got["ci95"] == pytest.approx(interval.high)
    assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(cand - ref).pvalue)
    assert got["wins"] + got["losses"] + got["ties"] == 15
    assert got["wins"] == int((cand > ref).sum())


def test_exact_wilcoxon_when_every_fold_wins():
    # 5 positive differences of distinct size: the exact two-sided p is 2 / 2**5
    ref = {k: 0.6 for k in range(5)}
    cand = {k: 0.6 + 0.01 * (k + 1) for k in range(5)}
    got = paired_difference(cand, ref)
    assert (got["wins"], got["losses"], got["ties"]) == (5, 0, 0)
    assert got["wilcoxon_p"] == pytest.approx(2 / 32)


def test_pairing_removes_the_fold_to_fold_spread():
    # folds differ a lot in difficulty; the candidate is better by 0.01 on every one of them.
    # Unpaired, the two marginal 95% intervals overlap almost entirely; paired, the difference
    # is certain (sd 0 up to rounding) and every fold is a win.
    hard = np.linspace(0.5, 0.8, 15)
    ref, cand = dict(enumerate(hard)), dict(enumerate(hard + 0.01))
    got = paired_difference(cand, ref)
    assert got["mean"] == pytest.approx(0.01)
    assert got["ci95"] < 1e-9 and got["wins"] == 15
    unpaired = stats.ttest_ind(hard + 0.01, hard)
    assert unpaired.pvalue > 0.5  # an unpaired test sees nothing
    assert got["wilcoxon_p"] < 0.001


def test_only_common_folds_are_compared_and_the_rest_are_named():
    cand = {0: 0.7, 1: 0.6, 2: 0.65, 3: float("nan")}
    ref = {0: 0.6, 1: 0.65, 2: 0.6, 4: 0.6}
    got = paired_difference(cand, ref)
    assert got["folds"] == [0, 1, 2] and got["n"] == 3
    assert got["only_candidate"] == [] and got["only_reference"] == [4]  # fold 3 is NaN: missing
    assert (got["wins"], got["losses"]) == (2, 1)


def test_ties_and_a_single_fold():
    same = paired_difference({0: 0.6, 1: 0.7}, {0: 0.6, 1: 0.7})
    assert same["ties"] == 2 and same["wilcoxon_p"] == 1.0 and same["mean"] == 0.0
    one = paired_difference({3: 0.7}, {3: 0.6})
    assert one["n"] == 1 and math.isnan(one["ci95"]) and one["wins"] == 1


def test_no_common_fold_is_an_error():
    with pytest.raises(
        PgoError, match=r"no fold in common \(candidate folds \[0\], reference folds \[1\]\)"
    ):
        paired_difference({0: 0.6}, {1: 0.6})
