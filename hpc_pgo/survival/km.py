"""Kaplan-Meier curves of test patients split at the median hazard, with the log-rank test.

Patients whose hazard is above the median are "high risk", the others (median included)
"low risk". Estimation and the test are lifelines'; drawing is matplotlib's Agg canvas on a
standalone Figure (no pyplot state, no display needed).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.cox import check_survival

__all__ = ["HIGH_RISK", "LOW_RISK", "km_split", "plot_km"]

LOW_RISK = "low risk"
HIGH_RISK = "high risk"
_GROUP_COLORS = {LOW_RISK: "tab:blue", HIGH_RISK: "tab:red"}
_PATIENT_COLUMNS = ("hazard", "time", "event")

log = logging.getLogger(__name__)


def km_split(patients: pd.DataFrame, where: str = "patients") -> tuple[pd.Series, float]:
    """Split patients at the median hazard and test the two groups with the log-rank test.

    patients: one row per patient with columns hazard (log hazard, higher = worse), time
    (>= 0) and event (1 = death observed), e.g. from ``patient_hazards``.
    Returns (groups, p): groups is a Series aligned with ``patients.index`` holding
    ``HIGH_RISK`` where hazard > median and ``LOW_RISK`` otherwise; p is lifelines'
    log-rank p-value. p is NaN (with a warning logged) when the test is undefined: one group
    is empty (all hazards equal) or no patient died.
    """
    missing = [c for c in _PATIENT_COLUMNS if c not in patients.columns]
    if missing:
        raise PgoError(
            f"{where}: missing column {missing[0]!r}; valid: columns {', '.join(_PATIENT_COLUMNS)}"
        )
    if patients.empty:
        raise PgoError(f"{where}: no patients; valid: at least one patient")
    check_survival(
        torch.as_tensor(patients["time"].to_numpy(np.float64)),
        torch.as_tensor(patients["event"].to_numpy(np.float64)),
        where=where,
    )
    hazard = patients["hazard"].to_numpy(np.float64)
    if not np.isfinite(hazard).all():
        i = int(np.flatnonzero(~np.isfinite(hazard))[0])
        raise PgoError(
            f"{where}: hazard {hazard[i]} at index {i} is invalid; valid: a finite number"
        )
    high = patients["hazard"] > patients["hazard"].median()
    groups = pd.Series(LOW_RISK, index=patients.index, name="group").where(~high, HIGH_RISK)
    if high.all() or not high.any() or patients["event"].sum() == 0:
        log.warning("%s: log-rank test undefined (one group empty or no death); p = NaN", where)
        return groups, float("nan")
    result = logrank_test(
        patients.loc[high, "time"],
        patients.loc[~high, "time"],
        event_observed_A=patients.loc[high, "event"],
        event_observed_B=patients.loc[~high, "event"],
    )
    return groups, float(result.p_value)


def _save_atomically(fig: Figure, path: Path) -> None:
    """Write the PNG to a temporary name in the same directory, then rename it into place."""
    if not path.parent.is_dir():
        raise PgoError(
            f"{path}: directory {path.parent} does not exist; valid: an existing directory"
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(fig).print_png(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def plot_km(
    patients: pd.DataFrame,
    path: str | os.PathLike,
    title: str = "Kaplan-Meier, split at the median hazard",
    time_label: str = "time",
) -> float:
    """Draw the two Kaplan-Meier curves of ``km_split`` to a PNG at ``path``; return the p-value.

    Curves show the survival function with its 95% confidence band and censoring ticks; the
    legend gives each group's size and the title the log-rank p (NaN when undefined).
    The file is written atomically; nothing is left behind on error.
    """
    groups, p = km_split(patients)
    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.add_subplot()
    for name in (LOW_RISK, HIGH_RISK):
        members = patients[groups == name]
        if members.empty:
            continue
        kmf = KaplanMeierFitter(label=f"{name} (n={len(members)})")
        kmf.fit(members["time"], event_observed=members["event"])
        kmf.plot_survival_function(
            ax=ax, ci_show=True, show_censors=True, color=_GROUP_COLORS[name]
        )
    p_text = "n/a" if math.isnan(p) else f"{p:.2e}"
    ax.set_title(f"{title}\nlog-rank p = {p_text}")
    ax.set_xlabel(time_label)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0.0, 1.05)
    fig.tight_layout()
    _save_atomically(fig, Path(path))
    return p
