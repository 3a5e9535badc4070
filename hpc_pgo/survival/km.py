"""Kaplan-Meier curves of test patients in a low- and a high-risk group, with the log-rank test.

One set of patients (``km_split``): patients whose hazard is above the median are "high risk",
the others (median included) "low risk".

The folds of a run (``risk_groups``): the 15 splits are random 80/20 splits of the patients, so
a patient is a test patient in about 3 of them (on the demo cohort 450 fold-patient rows hold
143 distinct patients, one of them 7 times). Pooling the rows would count such a patient once
per split, as independent observations, in both the curves and the log-rank test (on the demo:
p = 4.3e-6 pooled against about 0.01 with each patient once). The rule used here assigns each
patient ONE group and tests unique patients:

1. per fold k, over that fold's test patients (predicted by the fold's model, which never saw
   them): the threshold m_k = median hazard and the spread s_k = standard deviation (ddof 0) of
   the hazards. No outcome is used. (The median of the fold's TRAINING patients would be the
   other outcome-free threshold; predictions.csv holds test units only.)
2. the patient's standardized position in fold k: z_k = (hazard_k - m_k) / s_k (0 when s_k = 0,
   a fold whose hazards are all equal says nothing);
3. one group per patient: high risk when the mean of its z_k over the folds that tested it is
   > 0, else low risk (a mean of exactly 0, e.g. the median patient of one fold, is low risk,
   as the median is in ``km_split``). A patient tested once gets exactly ``km_split``'s group in
   that fold. The mean position rather than a majority of above/below votes: patients tested in
   2 or 4 folds tie often, and a vote ignores how far from the threshold each call was;
4. the log-rank test (lifelines.statistics.logrank_test) and the curves over the unique
   patients, each with its own time and event (which must agree across folds).

Pathomic Fusion (Chen et al., 2020), whose protocol the paper follows, pools the test
predictions of all splits and splits them at percentiles of the pooled hazards, counting a
patient once per split it was tested in: the pooled defect this rule avoids.

Estimation and the test are lifelines'; drawing is matplotlib's Agg canvas on a standalone
Figure (no pyplot state, no display needed).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Mapping
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

__all__ = [
    "HIGH_RISK",
    "KM_RULE",
    "LOW_RISK",
    "km_split",
    "logrank_p",
    "plot_km",
    "risk_groups",
]

LOW_RISK = "low risk"
HIGH_RISK = "high risk"
_GROUP_COLORS = {LOW_RISK: "tab:blue", HIGH_RISK: "tab:red"}
_PATIENT_COLUMNS = ("hazard", "time", "event")
_FOLD_COLUMNS = ("patient", "hazard", "time", "event")
# The rule of risk_groups in one line, as summary.json / summary.md state it.
KM_RULE = (
    "one group per unique test patient: high risk when the mean over the folds that tested it "
    "of (hazard - fold median) / fold std (test patients of that fold) is > 0, else low risk; "
    "log-rank over unique patients"
)

log = logging.getLogger(__name__)


def _check_patients(patients: pd.DataFrame, columns: tuple[str, ...], where: str) -> None:
    """Required columns present, at least one row, valid time/event, finite hazard if asked."""
    missing = [c for c in columns if c not in patients.columns]
    if missing:
        raise PgoError(
            f"{where}: missing column {missing[0]!r}; valid: columns {', '.join(columns)}"
        )
    if patients.empty:
        raise PgoError(f"{where}: no patients; valid: at least one patient")
    check_survival(
        torch.as_tensor(patients["time"].to_numpy(np.float64)),
        torch.as_tensor(patients["event"].to_numpy(np.float64)),
        where=where,
    )
    if "hazard" in columns:
        hazard = patients["hazard"].to_numpy(np.float64)
        if not np.isfinite(hazard).all():
            i = int(np.flatnonzero(~np.isfinite(hazard))[0])
            raise PgoError(
                f"{where}: hazard {hazard[i]} at index {i} is invalid; valid: a finite number"
            )
    if "patient" in patients.columns:
        repeated = patients["patient"].duplicated()
        if repeated.any():
            patient = patients["patient"][repeated].iloc[0]
            count = int((patients["patient"] == patient).sum())
            raise PgoError(
                f"{where}: patient {patient!r} appears {count} times; valid: one row per patient "
                "(combine the folds of a run with risk_groups, which counts each patient once)"
            )


def logrank_p(patients: pd.DataFrame, groups: pd.Series, where: str = "patients") -> float:
    """lifelines' log-rank p-value of HIGH_RISK against LOW_RISK over one row per patient.

    patients: columns time (>= 0) and event (1 = death observed); groups: aligned with
    ``patients.index``, each HIGH_RISK or LOW_RISK. NaN (with a warning logged) when the test is
    undefined: one group is empty or no patient died.
    """
    high = (groups == HIGH_RISK).reindex(patients.index)
    if high.isna().any() or not groups.isin([HIGH_RISK, LOW_RISK]).all():
        raise PgoError(
            f"{where}: groups do not give {HIGH_RISK!r} or {LOW_RISK!r} for every patient; "
            "valid: a Series aligned with the patients' index"
        )
    high = high.astype(bool)
    if high.all() or not high.any() or patients["event"].sum() == 0:
        log.warning("%s: log-rank test undefined (one group empty or no death); p = NaN", where)
        return float("nan")
    result = logrank_test(
        patients.loc[high, "time"],
        patients.loc[~high, "time"],
        event_observed_A=patients.loc[high, "event"],
        event_observed_B=patients.loc[~high, "event"],
    )
    return float(result.p_value)


def km_split(patients: pd.DataFrame, where: str = "patients") -> tuple[pd.Series, float]:
    """Split patients at the median hazard and test the two groups with the log-rank test.

    patients: one row per patient with columns hazard (log hazard, higher = worse), time
    (>= 0) and event (1 = death observed), e.g. from ``patient_hazards``; a ``patient`` column,
    when present, must not repeat (pooled folds: use ``risk_groups``).
    Returns (groups, p): groups is a Series aligned with ``patients.index`` holding
    ``HIGH_RISK`` where hazard > median and ``LOW_RISK`` otherwise; p is lifelines'
    log-rank p-value. p is NaN (with a warning logged) when the test is undefined: one group
    is empty (all hazards equal) or no patient died.
    """
    _check_patients(patients, _PATIENT_COLUMNS, where)
    high = patients["hazard"] > patients["hazard"].median()
    groups = pd.Series(LOW_RISK, index=patients.index, name="group").where(~high, HIGH_RISK)
    return groups, logrank_p(patients, groups, where)


def risk_groups(folds: Mapping[int, pd.DataFrame], where: str = "folds") -> pd.DataFrame:
    """One risk group per unique test patient of several folds (the module text's rule).

    folds: fold number -> that fold's test patients, one row per patient with columns patient,
    hazard (log hazard, higher = worse), time (>= 0), event (1 = death observed), e.g.
    ``patient_hazards`` of the fold's predictions. A patient may appear in several folds.
    Returns one row per unique patient, sorted by patient, with columns patient, position (the
    mean over its folds of z_k = (hazard_k - median_k) / std_k), time, event, n_folds (how many
    folds tested it) and group (HIGH_RISK when position > 0, else LOW_RISK).
    Raises PgoError on a bad table (naming the fold) and when a patient's time or event differs
    between folds (naming the patient and the folds).
    """
    if not folds:
        raise PgoError(f"{where}: no fold; valid: at least one fold of test patients")
    frames = []
    for k, patients in sorted(folds.items()):
        _check_patients(patients, _FOLD_COLUMNS, f"fold {k}")
        hazard = patients["hazard"].to_numpy(np.float64)
        spread = float(hazard.std())
        z = (hazard - np.median(hazard)) / spread if spread > 0 else np.zeros_like(hazard)
        frames.append(
            pd.DataFrame(
                {
                    "patient": patients["patient"].astype(str).to_numpy(),
                    "z": z,
                    "time": patients["time"].to_numpy(np.float64),
                    "event": patients["event"].to_numpy(np.int64),
                    "fold": k,
                }
            )
        )
    rows = pd.concat(frames, ignore_index=True)
    by_patient = rows.groupby("patient", sort=True)
    for column in ("time", "event"):
        n_values = by_patient[column].nunique()
        if (n_values > 1).any():
            patient = n_values[n_values > 1].index[0]
            seen = rows.loc[rows["patient"] == patient, ["fold", column]]
            shown = ", ".join(f"fold {f}: {v:g}" for f, v in seen.itertuples(index=False))
            raise PgoError(
                f"{where}: patient {patient!r} has different {column} values across folds "
                f"({shown}); valid: one {column} per patient"
            )
    out = by_patient.agg(
        position=("z", "mean"),
        time=("time", "first"),
        event=("event", "first"),
        n_folds=("fold", "size"),
    ).reset_index()
    out["group"] = np.where(out["position"] > 0, HIGH_RISK, LOW_RISK)
    return out


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
    groups: pd.Series | None = None,
) -> float:
    """Draw the Kaplan-Meier curves of the two risk groups to a PNG at ``path``; return the p-value.

    patients: one row per patient (columns time, event; hazard when groups is None; a
    ``patient`` column must not repeat). groups: each patient's HIGH_RISK / LOW_RISK, aligned
    with ``patients.index`` (e.g. ``risk_groups(...)["group"]``); None splits at the median
    hazard (``km_split``).
    Curves show the survival function with its 95% confidence band and censoring ticks; the
    legend gives each group's size and the title the number of patients and the log-rank p
    (NaN when undefined). The file is written atomically; nothing is left behind on error.
    """
    if groups is None:
        groups, p = km_split(patients)
    else:
        _check_patients(patients, ("time", "event"), "patients")
        p = logrank_p(patients, groups)
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
    ax.set_title(f"{title}\n{len(patients)} patients, each once; log-rank p = {p_text}")
    ax.set_xlabel(time_label)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0.0, 1.05)
    fig.tight_layout()
    _save_atomically(fig, Path(path))
    return p
