"""Paired comparison of two configurations evaluated on the same cross-validation splits.

Configurations that share splits are compared fold by fold: with c_k the candidate's C-index
on fold k and r_k the reference's, over the n folds both have,

    d_k  = c_k - r_k
    mean = sum_k d_k / n
    sd   = sqrt(sum_k (d_k - mean)^2 / (n - 1))
    ci95 = t.ppf(0.975, n - 1) * sd / sqrt(n)     (half-width; the paired t interval)
    wins = #{k: d_k > 0}, losses = #{k: d_k < 0}, ties = #{k: d_k = 0}
    p    = Wilcoxon signed-rank, two-sided, on the d_k (scipy; zero differences dropped, exact
           distribution for small n without ties, as scipy chooses)

The point of pairing: fold-to-fold variation (some splits are harder for every model) cancels
in d_k, so the interval is that of the difference, not of two overlapping marginal intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.protocol import t_interval

__all__ = ["paired_difference"]


def _finite(values: Mapping[int, float | None]) -> dict[int, float]:
    return {
        int(k): float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))
    }


def paired_difference(
    candidate: Mapping[int, float | None], reference: Mapping[int, float | None]
) -> dict:
    """Per-fold paired difference candidate - reference over the folds both have.

    candidate, reference: fold -> C-index (None or NaN: that fold is missing, e.g. it failed).
    Returns {"n", "folds", "mean", "ci95", "sd", "wins", "losses", "ties", "wilcoxon_p",
    "only_candidate", "only_reference"}: the statistics of the module docstring over the common
    folds, and the folds that only one side has (left out of the comparison). With one common
    fold, sd and ci95 are NaN; with no non-zero difference the Wilcoxon p is 1.0.
    Raises PgoError when the two share no fold.
    """
    cand, ref = _finite(candidate), _finite(reference)
    common = sorted(set(cand) & set(ref))
    if not common:
        raise PgoError(
            f"no fold in common (candidate folds {sorted(cand)}, reference folds {sorted(ref)}); "
            "valid: two runs over the same splits"
        )
    d = np.array([cand[k] - ref[k] for k in common], dtype=np.float64)
    n = d.size
    mean, sd, ci95 = t_interval(d)
    nonzero = d[d != 0]
    p = float(stats.wilcoxon(nonzero).pvalue) if nonzero.size else 1.0
    return {
        "n": n,
        "folds": common,
        "mean": mean,
        "ci95": ci95,
        "sd": sd,
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "ties": int((d == 0).sum()),
        "wilcoxon_p": p,
        "only_candidate": sorted(set(cand) - set(ref)),
        "only_reference": sorted(set(ref) - set(cand)),
    }
