"""Harrell's concordance index, computed by lifelines, with our sign convention handled here.

lifelines' ``concordance_index(event_times, predicted_scores, event_observed)`` expects scores
where higher = LONGER survival. Our theta is a log hazard, higher = WORSE, so we pass -theta.
This is the only place in hpc_pgo where that sign flip happens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lifelines.utils import concordance_index

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.cox import check_survival

__all__ = ["concordance"]


def _as_numpy(values: Any) -> np.ndarray:
    """A 1-D float64 numpy copy of a tensor (any device), array, Series or list."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values, dtype=np.float64)


def concordance(time: Any, theta: Any, event: Any, where: str = "predictions") -> float:
    """Harrell's C between observed times and predicted log hazards, as lifelines computes it.

        C = (concordant pairs + 0.5 * pairs tied in theta) / comparable pairs

    A pair (i, j) is comparable when the sample with the shorter time died (event 1); it is
    concordant when that sample has the higher theta. 1.0 = perfect ranking, 0.5 = random,
    0.0 = perfectly reversed.

    time: (N,) times >= 0; theta: (N,) log hazard, higher = worse; event: (N,) 1 = death
    observed, 0 = censored. Tensors (any device), numpy arrays, Series and lists are accepted.
    ``where`` names the source in error messages. Raises PgoError on invalid input or when no
    pair is comparable (e.g. no death), where C is undefined.
    """
    time_np, theta_np, event_np = _as_numpy(time), _as_numpy(theta), _as_numpy(event)
    check_survival(torch.from_numpy(time_np), torch.from_numpy(event_np), where=where)
    if theta_np.shape != time_np.shape:
        raise PgoError(
            f"{where}: theta has shape {theta_np.shape} but time has {time_np.shape}; "
            "valid: one log hazard per sample"
        )
    bad = ~np.isfinite(theta_np)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PgoError(
            f"{where}: theta {float(theta_np[i])!r} at index {i} is invalid; valid: a finite number"
        )
    try:
        c = concordance_index(time_np, -theta_np, event_np)
    except ZeroDivisionError:
        raise PgoError(
            f"{where}: no comparable pair among {time_np.size} samples "
            f"({int(event_np.sum())} deaths), so the C-index is undefined; "
            "valid: at least one death before another sample's time"
        ) from None
    return float(c)
