"""The report of a run: per-fold C-index by the evaluation protocol, KM curves, modulation plot.

``write_report(run_dir)`` reads every run_dir/fold_<k>/predictions.csv (columns patient, unit,
hazard, time, event; hpc_pgo.survival.read_predictions), applies the protocol of
hpc_pgo.survival (patient hazard = mean over units, Harrell's C per fold, mean +- t(0.975, n-1)
SEM over folds) and writes, each atomically:

    summary.json     {"c_index": {"mean", "ci95", "std", "per_fold": {"<k>": c}}, "n_folds",
                      "failed_folds": {"<k>": error}, "missing_folds": [k], "config_digest",
                      "folds": {"<k>": {"patients", "events", "units"}}}   (NaN -> null)
    summary.md       a table fold | C-index | patients | events, then mean +- ci95 and std
    km.png           test patients of all folds pooled (one row per fold and patient), split at
                     the median hazard, with the log-rank p
    modulation.png   rho and the coefficients k over training (fold_<k>/modulation.csv), mean
                     over folds with a +-1 std band; left out when no fold logged modulation

It works on partial runs (missing folds are listed) and on prediction files from elsewhere in
the same layout (without config.yaml the folds are the fold_<k> directories found).

A sweep (run_dir/sweep.json, written at submit) has one sub-run per configuration:
``write_sweep_report`` writes each sub-run's report and a side-by-side table (sweep.md,
sweep_summary.json) in the order of the sweep file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from hpc_pgo.atomic import write_text
from hpc_pgo.config import CONFIG_FILE, config_digest, load_config
from hpc_pgo.errors import PgoError
from hpc_pgo.launch.plan import fold_dir
from hpc_pgo.launch.task import ERROR_FILE, METRICS_FILE, PREDICTIONS_FILE
from hpc_pgo.survival import fold_cindex, patient_hazards, read_predictions, summarize_cindex

log = logging.getLogger(__name__)

SUMMARY_JSON, SUMMARY_MD, KM_PNG, MODULATION_PNG = (
    "summary.json", "summary.md", "km.png", "modulation.png",
)  # fmt: skip
SWEEP_FILE, SWEEP_JSON, SWEEP_MD = "sweep.json", "sweep_summary.json", "sweep.md"
MODULATION_FILE = "modulation.csv"
# modulation.csv columns drawn, per panel: the contribution ratios, then the coefficients.
MODULATION_PANELS = {"rho": ("rho_g", "rho_p"), "coefficient k": ("k_g", "k_p")}
_FOLD_DIR = re.compile(r"fold_(\d+)")


def expected_folds(run_dir: Path) -> list[int]:
    """The folds a run should have: config.yaml's folds, else the fold_<k> directories found."""
    if (run_dir / CONFIG_FILE).is_file():
        return [int(k) for k in load_config(run_dir).folds]
    found = sorted(
        int(m.group(1)) for p in run_dir.glob("fold_*") if (m := _FOLD_DIR.fullmatch(p.name))
    )
    if not found:
        raise PgoError(
            f"{run_dir}: no {CONFIG_FILE} and no fold_<k> directory; valid: a run directory "
            f"(launch/submit.py) or a folder of fold_<k>/{PREDICTIONS_FILE}"
        )
    return found


def first_line(text: str) -> str:
    """The first non-empty line of a text (an error file's summary line)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "(empty error.txt)")


def collect_folds(
    run_dir: Path, folds: list[int]
) -> tuple[dict[int, pd.DataFrame], dict[int, str], list[int]]:
    """(predictions by fold, failed fold -> error line, missing folds) of a run directory.

    A fold with error.txt is failed, unless its metrics.json says it finished later (a fold
    that was rerun); a fold whose predictions.csv does not pass read_predictions is failed with
    that error; a fold with neither file is missing.
    """
    preds: dict[int, pd.DataFrame] = {}
    failed: dict[int, str] = {}
    missing: list[int] = []
    for k in folds:
        out = fold_dir(run_dir, k)
        if (out / ERROR_FILE).is_file() and not (out / METRICS_FILE).is_file():
            failed[k] = first_line((out / ERROR_FILE).read_text(encoding="utf-8", errors="replace"))
        elif (out / PREDICTIONS_FILE).is_file():
            try:
                preds[k] = read_predictions(out / PREDICTIONS_FILE)
            except PgoError as err:
                failed[k] = str(err)
        else:
            missing.append(k)
    return preds, failed, missing


def _finite_or_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summarize_run(run_dir: Path) -> tuple[dict, dict[int, pd.DataFrame]]:
    """The summary dict of a run (as summary.json holds it) and its patients per fold."""
    folds = expected_folds(run_dir)
    preds, failed, missing = collect_folds(run_dir, folds)
    per_fold: dict[int, float] = {}
    patients: dict[int, pd.DataFrame] = {}
    for k, df in preds.items():
        try:
            patients[k] = patient_hazards(df, where=f"fold {k}")
            per_fold[k] = fold_cindex(df, where=f"fold {k}")
        except PgoError as err:
            failed[k] = str(err)
            patients.pop(k, None)
    stats = summarize_cindex(per_fold) if per_fold else {"mean": None, "ci95": None, "std": None}
    digest = config_digest(load_config(run_dir)) if (run_dir / CONFIG_FILE).is_file() else None
    summary = {
        "c_index": {
            "mean": _finite_or_none(stats["mean"]),
            "ci95": _finite_or_none(stats["ci95"]),
            "std": _finite_or_none(stats["std"]),
            "per_fold": {str(k): per_fold[k] for k in sorted(per_fold)},
        },
        "n_folds": len(per_fold),
        "failed_folds": {str(k): failed[k] for k in sorted(failed)},
        "missing_folds": sorted(missing),
        "config_digest": digest,
        "folds": {
            str(k): {
                "patients": int(len(p)),
                "events": int(p["event"].sum()),
                "units": int(p["n_units"].sum()),
            }
            for k, p in sorted(patients.items())
        },
    }
    return summary, patients


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_markdown(summary: Mapping, title: str) -> str:
    """summary.md: the per-fold table, then mean +- ci95 and std, then failed and missing folds."""
    c = summary["c_index"]
    lines = [f"# {title}", "", "| fold | C-index | patients | events |", "|---:|---:|---:|---:|"]
    for k, value in c["per_fold"].items():
        fold = summary["folds"][k]
        lines.append(f"| {k} | {value:.4f} | {fold['patients']} | {fold['events']} |")
    lines += [
        "",
        f"C-index over {summary['n_folds']} fold(s): {_fmt(c['mean'])} ± {_fmt(c['ci95'])} "
        f"(95% CI half-width, t with n-1 df); std {_fmt(c['std'])}",
    ]
    for k, error in summary["failed_folds"].items():
        lines.append(f"- fold {k} FAILED: {error}")
    if summary["missing_folds"]:
        shown = ", ".join(str(k) for k in summary["missing_folds"])
        lines.append(f"- missing folds (no predictions yet): {shown}")
    return "\n".join(lines) + "\n"


def plot_modulation(run_dir: Path, folds: list[int], path: Path) -> bool:
    """modulation.png from fold_<k>/modulation.csv: per panel, mean over folds +- 1 std band.

    x is the csv's `step` column (else `epoch`); folds are aligned on x. Returns False (and
    writes nothing) when no fold has a modulation.csv with the MODULATION_PANELS columns.
    """
    frames = []
    for k in folds:
        file = fold_dir(run_dir, k) / MODULATION_FILE
        if file.is_file():
            df = pd.read_csv(file)
            if len(df):
                frames.append(df.assign(fold=k))
    wanted = [c for cols in MODULATION_PANELS.values() for c in cols]
    if not frames:
        return False
    data = pd.concat(frames, ignore_index=True)
    x = next((c for c in ("step", "epoch") if c in data.columns), None)
    if x is None or not any(c in data.columns for c in wanted):
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), dpi=110)
    for i, (panel, columns) in enumerate(MODULATION_PANELS.items()):
        ax = fig.add_subplot(1, len(MODULATION_PANELS), i + 1)
        for column in columns:
            if column not in data.columns:
                continue
            stats = data.groupby(x)[column].agg(["mean", "std"]).fillna(0.0)
            ax.plot(stats.index, stats["mean"], label=column)
            ax.fill_between(
                stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.25
            )
        ax.set_xlabel(x)
        ax.set_title(f"{panel} (mean over {data['fold'].nunique()} folds, ±1 std)")
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            FigureCanvasAgg(fig).print_png(out)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def write_report(run_dir: str | os.PathLike, title: str | None = None) -> dict:
    """Write summary.json, summary.md, km.png and modulation.png of one run; return the summary."""
    from hpc_pgo.survival.km import plot_km  # loads matplotlib

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise PgoError(
            f"run directory {run_dir} does not exist; valid: a run directory of launch/submit.py"
        )
    summary, patients = summarize_run(run_dir)
    title = title or run_dir.name
    if patients:
        pooled = pd.concat(
            [p.assign(fold=k) for k, p in sorted(patients.items())], ignore_index=True
        )
        p_value = plot_km(
            pooled, run_dir / KM_PNG, title=f"{title}: test patients of {len(patients)} fold(s)"
        )
        summary["km_logrank_p"] = _finite_or_none(p_value)
    summary["modulation_plot"] = plot_modulation(
        run_dir, sorted(patients), run_dir / MODULATION_PNG
    )
    write_text(run_dir / SUMMARY_JSON, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    write_text(run_dir / SUMMARY_MD, summary_markdown(summary, title))
    return summary


def sweep_table(sweep: Mapping, summaries: Mapping[str, Mapping]) -> str:
    """The sweep side by side, as the paper's table: one row per configuration, its labels, C-index."""
    columns = list(sweep["columns"])
    head = ["run", *columns, "C-index (mean ± ci95)", "std", "folds", "failed"]
    lines = [f"# {sweep['title']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in sweep["runs"]:
        s = summaries[run["name"]]
        c = s["c_index"]
        labels = [str(run["labels"].get(col, "")) for col in columns]
        lines.append(
            "| " + " | ".join([run["name"], *labels, f"{_fmt(c['mean'])} ± {_fmt(c['ci95'])}",
                               _fmt(c["std"]), str(s["n_folds"]), str(len(s["failed_folds"]))]) + " |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def write_sweep_report(run_dir: str | os.PathLike) -> dict:
    """Each sub-run's report, then sweep.md and sweep_summary.json side by side; returns the latter."""
    run_dir = Path(run_dir).resolve()
    sweep = json.loads((run_dir / SWEEP_FILE).read_text(encoding="utf-8"))
    summaries = {
        run["name"]: write_report(run_dir / run["name"], title=run["name"]) for run in sweep["runs"]
    }
    write_text(run_dir / SWEEP_MD, sweep_table(sweep, summaries))
    result = {"sweep": sweep["name"], "runs": summaries}
    write_text(run_dir / SWEEP_JSON, json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def report(run_dir: str | os.PathLike) -> str:
    """Write the report of a run or a sweep; return the Markdown table to print."""
    run_dir = Path(run_dir).resolve()
    if (run_dir / SWEEP_FILE).is_file():
        write_sweep_report(run_dir)
        return (run_dir / SWEEP_MD).read_text(encoding="utf-8")
    write_report(run_dir)
    return (run_dir / SUMMARY_MD).read_text(encoding="utf-8")


class ReportJob:
    """A picklable callable that writes the report of run_dir (the Slurm aggregation job)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        return report(self.run_dir)
