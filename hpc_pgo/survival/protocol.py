"""The evaluation protocol (Pathomic Fusion's, which the paper follows) on per-unit predictions.

A fold's predictions are one row per image unit (ROI or tile) of a test patient, with columns

    patient  str    patient id
    unit     str    unit id within the patient
    hazard   float  predicted log hazard theta (higher = worse)
    time     float  the patient's survival / censoring time, >= 0
    event    int    1 = death observed, 0 = censored

The patient's hazard is the mean of theta over its units; the fold's C-index is Harrell's C
over patients (lifelines); folds are summarised as mean +- t(0.975, n-1) * SEM.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.concordance import concordance

__all__ = [
    "PREDICTION_COLUMNS",
    "fold_cindex",
    "patient_hazards",
    "read_predictions",
    "summarize_cindex",
    "summarize_folds",
    "t_interval",
    "validate_predictions",
]

PREDICTION_COLUMNS = ("patient", "unit", "hazard", "time", "event")
_ID_COLUMNS = ("patient", "unit")


def _row(position: int, line_offset: int | None) -> str:
    """'line L' of a CSV file (header = line 1) or 'row P' (0-based position) of a frame."""
    if line_offset is not None:
        return f", line {position + line_offset}"
    return f", row {position}"


def _show(value: object) -> str:
    """A cell value as a user reads it: 2, -1.5, nan, 'x' (not np.int64(2))."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value) if isinstance(value, str) else str(value)


def _numeric(df: pd.DataFrame, column: str, where: str, line_offset: int | None) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce").astype(np.float64)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PgoError(
            f"{where}{_row(i, line_offset)}: column {column!r} value {_show(df[column].iloc[i])} "
            "is invalid; valid: a finite number"
        )
    return values


def validate_predictions(
    df: pd.DataFrame, where: str = "predictions", line_offset: int | None = None
) -> pd.DataFrame:
    """Check a per-unit prediction table and return a clean copy with the canonical dtypes.

    Required columns: ``PREDICTION_COLUMNS`` (extra columns are kept). Rules: patient and unit
    are non-empty; hazard is finite; time is finite and >= 0; event is 0 or 1; no (patient,
    unit) pair appears twice (a duplicated unit, e.g. from a padded distributed sampler, would
    bias the patient's mean). ``where`` names the source in errors; ``line_offset`` turns a
    0-based row position into a file line number. Raises PgoError naming the first violation.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise PgoError(
            f"{where}: missing column {missing[0]!r}; valid: columns {', '.join(PREDICTION_COLUMNS)}"
        )
    if df.empty:
        raise PgoError(f"{where}: no prediction rows; valid: at least one row per test unit")
    out = df.reset_index(drop=True).copy()
    for column in _ID_COLUMNS:
        empty = out[column].isna().to_numpy() | (out[column].astype(str).str.strip() == "")
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise PgoError(
                f"{where}{_row(i, line_offset)}: column {column!r} is empty; valid: a non-empty id"
            )
        out[column] = out[column].astype(str)
    out["hazard"] = _numeric(out, "hazard", where, line_offset)
    time = _numeric(out, "time", where, line_offset)
    negative = (time < 0).to_numpy()
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise PgoError(
            f"{where}{_row(i, line_offset)}: survival time {_show(time.iloc[i])} is invalid; "
            "valid: a finite number >= 0"
        )
    out["time"] = time
    event = pd.to_numeric(out["event"], errors="coerce")
    bad_event = ~event.isin([0, 1]).to_numpy()
    if bad_event.any():
        i = int(np.flatnonzero(bad_event)[0])
        raise PgoError(
            f"{where}{_row(i, line_offset)}: event {_show(out['event'].iloc[i])} is invalid; "
            "valid: 0 (censored) or 1 (death observed)"
        )
    out["event"] = event.astype(np.int64)
    duplicated = out.duplicated(list(_ID_COLUMNS)).to_numpy()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        raise PgoError(
            f"{where}{_row(i, line_offset)}: unit {out['unit'].iloc[i]!r} of patient "
            f"{out['patient'].iloc[i]!r} appears twice; valid: one prediction per unit"
        )
    return out


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate one fold's ``predictions.csv`` (see ``validate_predictions``).

    Ids are read as strings (a TCGA barcode or a numeric id stays as written). Raises PgoError
    naming the file, and the line or missing column, on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise PgoError(
            f"{path}: predictions file not found; valid: a CSV with columns "
            f"{', '.join(PREDICTION_COLUMNS)}"
        )
    try:
        # keep_default_na=False: an id such as "NA" stays a string; numbers are checked later.
        df = pd.read_csv(path, dtype={c: str for c in _ID_COLUMNS}, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PgoError(
            f"{path}: not a readable CSV ({first_line}); valid: a CSV with columns "
            f"{', '.join(PREDICTION_COLUMNS)}"
        ) from None
    # Data row at position 0 is line 2 of the file (line 1 is the header).
    return validate_predictions(df, where=str(path), line_offset=2)


def patient_hazards(df: pd.DataFrame, where: str = "predictions") -> pd.DataFrame:
    """One row per patient: hazard = mean of the unit hazards; time and event of the patient.

    Input: a per-unit prediction table (validated here). Output columns: patient, hazard,
    time, event, n_units; sorted by patient. Raises PgoError when a patient's units disagree
    on time or event (they describe one patient, so they must be equal).
    """
    units = validate_predictions(df, where=where)
    grouped = units.groupby("patient", sort=True)
    for column in ("time", "event"):
        n_values = grouped[column].nunique()
        conflicting = n_values[n_values > 1]
        if not conflicting.empty:
            patient = conflicting.index[0]
            found = sorted(units.loc[units["patient"] == patient, column].unique().tolist())
            raise PgoError(
                f"{where}: patient {patient!r} has units with different {column} values {found}; "
                f"valid: one {column} per patient"
            )
    return grouped.agg(
        hazard=("hazard", "mean"),
        time=("time", "first"),
        event=("event", "first"),
        n_units=("unit", "size"),
    ).reset_index()


def fold_cindex(df: pd.DataFrame, where: str = "predictions") -> float:
    """Harrell's C over the patients of one fold (patient hazard = mean over its units)."""
    patients = patient_hazards(df, where=where)
    return concordance(patients["time"], patients["hazard"], patients["event"], where=where)


def summarize_cindex(per_fold: Mapping[int, float]) -> dict:
    """Summary of per-fold C-indices, as the papers print them (mean +- ci95).

    Returns {"mean", "ci95", "std", "per_fold", "n_folds"} where, with n folds and c_k values:
        mean = sum_k c_k / n
        std  = sqrt(sum_k (c_k - mean)^2 / (n - 1))          (sample std, ddof = 1)
        ci95 = t.ppf(0.975, n - 1) * std / sqrt(n)          (half-width of the 95% CI)
        per_fold = {k: c_k} sorted by fold, n_folds = n.
    With a single fold, std and ci95 are undefined and are NaN (float("nan")); a JSON writer
    must decide how to print them. Raises PgoError on an empty mapping or a value outside [0, 1].
    """
    if not per_fold:
        raise PgoError("no fold C-index to summarise; valid: at least one fold")
    values = {int(k): float(v) for k, v in sorted(per_fold.items())}
    for k, v in values.items():
        if not 0.0 <= v <= 1.0:  # also rejects NaN
            raise PgoError(f"fold {k}: C-index {v!r} is invalid; valid: a number in [0, 1]")
    mean, std, ci95 = t_interval(list(values.values()))
    return {"mean": mean, "ci95": ci95, "std": std, "per_fold": values, "n_folds": len(values)}


def cindex_summary(per_fold: Mapping[int, float]) -> dict:
    """summarize_cindex as summary.json holds it: {"mean", "ci95", "std", "per_fold": {"<k>": c}}
    with an undefined (NaN) value as None, and all None for no fold (a run with none finished)."""
    if not per_fold:
        return {"mean": None, "ci95": None, "std": None, "per_fold": {}}
    summary = summarize_cindex(per_fold)
    return {
        **{k: None if math.isnan(summary[k]) else summary[k] for k in ("mean", "ci95", "std")},
        "per_fold": {str(k): v for k, v in summary["per_fold"].items()},
    }


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, std, ci95) of n values: std with ddof = 1, ci95 = t.ppf(0.975, n - 1) * std / sqrt(n)
    (the half-width of the 95% t interval of the mean); std and ci95 are NaN when n = 1."""
    c = np.asarray(values, dtype=np.float64)
    n = c.size
    if n > 1:
        std = float(np.std(c, ddof=1))
        ci95 = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    else:
        std = ci95 = float("nan")
    return float(c.mean()), std, ci95


def summarize_folds(preds: Mapping[int, pd.DataFrame]) -> dict:
    """C-index per fold from per-unit predictions, then ``summarize_cindex``.

    preds: fold number -> per-unit prediction table (e.g. from ``read_predictions``).
    A fold that raises PgoError stops the summary; to keep the other folds, call
    ``fold_cindex`` per fold and pass the successes to ``summarize_cindex``.
    """
    return summarize_cindex({k: fold_cindex(df, where=f"fold {k}") for k, df in preds.items()})
