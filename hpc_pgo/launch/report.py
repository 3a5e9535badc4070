"""The report of a run: per-fold C-index by the evaluation protocol, KM curves, modulation plot.

``write_report(run_dir)`` reads every run_dir/fold_<k>/predictions.csv (columns patient, unit,
hazard, time, event; hpc_pgo.survival.read_predictions), applies the protocol of
hpc_pgo.survival (patient hazard = mean over units, Harrell's C per fold, mean +- t(0.975, n-1)
SEM over folds) and writes, each atomically:

    summary.json     {"c_index": {"mean", "ci95", "std", "per_fold": {"<k>": c}}, "n_folds",
                      "failed_folds": {"<k>": error}, "missing_folds": [k], "config_digest",
                      "folds": {"<k>": {"patients", "events", "units"}},
                      "km": {"patients", "rows", "folds", "high_risk", "low_risk",
                             "logrank_p", "rule"}, "km_logrank_p",
                      "branches": {"genomic"|"image": {"mean", "ci95", "std", "per_fold"}}
                                  or {"note": why a run has no branch parts}}   (NaN -> null)
    summary.md       a table fold | C-index | patients | events, then mean +- ci95 and std, then
                     the KM line (unique patients, groups, log-rank p)
    km.png           the unique test patients of all folds, each ONCE, in one risk group by
                     hpc_pgo.survival.km.risk_groups (per fold: position against that fold's median
                     test hazard; per patient: the mean position), with the log-rank p over them
    modulation.png   rho, the coefficients k and each branch part's training-batch C-index
                     over training (fold_<k>/modulation.csv), mean over folds with a +-1 std
                     band; left out when no fold logged modulation

It works on partial runs (missing folds are listed) and on prediction files from elsewhere in
the same layout (without config.yaml the folds are the fold_<k> directories found).

A sweep (run_dir/sweep.json, written at submit) has one sub-run per configuration:
``write_sweep_report`` writes each sub-run's report and a side-by-side table (sweep.md,
sweep_summary.json) in the order of the sweep file, with each branch part's C-index and, when
the sweep names a reference, every entry's paired per-fold comparison with it
(hpc_pgo.survival.paired).
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
from omegaconf import OmegaConf

from hpc_pgo.atomic import write_text
from hpc_pgo.config import CONFIG_FILE, config_digest, load_config
from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import ERROR, MODULATION, PREDICTIONS, fold_dir, has_metrics
from hpc_pgo.launch.replicates import paired_seed_noise, read_seeds, seed_dir, seed_summary
from hpc_pgo.launch.selection import SELECTION_FILE, write_selection
from hpc_pgo.survival import cindex_summary, fold_cindex, patient_hazards, read_predictions

log = logging.getLogger(__name__)

SUMMARY_JSON, SUMMARY_MD, KM_PNG, MODULATION_PNG = (
    "summary.json", "summary.md", "km.png", "modulation.png",
)  # fmt: skip
SWEEP_FILE, SWEEP_JSON, SWEEP_MD = "sweep.json", "sweep_summary.json", "sweep.md"
# modulation.csv columns drawn, per panel: the contribution ratios, the coefficients, and the
# training-batch C-index of each branch part (who learns when).
MODULATION_PANELS = {
    "rho": ("rho_g", "rho_p"),
    "coefficient k": ("k_g", "k_p"),
    "branch C-index (train batches)": ("cindex_g", "cindex_p"),
}
# predictions.csv columns of the concat head's parts (hpc_pgo.train.fold.BRANCH_COLUMNS), by part
BRANCH_PARTS = {"genomic": "hazard_genomic", "image": "hazard_image"}
_FOLD_DIR = re.compile(r"fold_(\d+)")


def expected_folds(run_dir: Path) -> list[int]:
    """The folds a run should have: config.yaml's folds, else the fold_<k> directories found."""
    if (run_dir / CONFIG_FILE).is_file():
        return [int(k) for k in load_config(run_dir).folds]
    if (run_dir / SELECTION_FILE).is_file():  # a select entry's folds: its candidates'
        return [int(k) for k in json.loads((run_dir / SELECTION_FILE).read_text())["folds"]]
    found = sorted(
        int(m.group(1)) for p in run_dir.glob("fold_*") if (m := _FOLD_DIR.fullmatch(p.name))
    )
    if not found:
        raise PgoError(
            f"{run_dir}: no {CONFIG_FILE} and no fold_<k> directory; valid: a run directory "
            f"(launch/submit.py) or a folder of fold_<k>/{PREDICTIONS}"
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
    that was rerun); a fold whose predictions.csv does not pass read_predictions, or holds a row
    of a patient who is not one of that fold's test patients (``stray_rows``), is failed with
    that error; a fold with neither file is missing.
    """
    splits = fold_test_splits(run_dir)
    preds: dict[int, pd.DataFrame] = {}
    failed: dict[int, str] = {}
    missing: list[int] = []
    for k in folds:
        out = fold_dir(run_dir, k)
        if (out / ERROR).is_file() and not has_metrics(out):
            failed[k] = first_line((out / ERROR).read_text(encoding="utf-8", errors="replace"))
        elif (out / PREDICTIONS).is_file():
            try:
                df = read_predictions(out / PREDICTIONS)
                if splits is not None:
                    stray_rows(df, out / PREDICTIONS, k, *splits)
                preds[k] = df
            except PgoError as err:
                failed[k] = str(err)
        else:
            missing.append(k)
    return preds, failed, missing


def fold_test_splits(run_dir: Path) -> tuple[Path, dict, tuple[int, int, int] | None] | None:
    """(shard set, its manifest, inner) of the run's config.yaml (data.shards; inner: (inner.folds,
    inner.fold, inner.seed) of an inner training, else None),
    whose splits.folds[k]["test"] are the patients fold k may have predictions for (for an inner
    training of nested selection, its part of fold k's train patients); None for a folder without a
    config.yaml (prediction files from elsewhere) and when that shard set is no longer there
    (a warning: the rows are then not checked). PgoError for a manifest that does not read or
    was edited since it was written (it is what the rows are checked against)."""
    from hpc_pgo.data.shards import MANIFEST, read_manifest

    if not (run_dir / CONFIG_FILE).is_file():
        return None
    cfg = load_config(run_dir)
    shards = Path(str(cfg.data.shards))
    if not (shards / MANIFEST).is_file():
        log.warning(
            "%s: shard set %s (data.shards) has no %s: the prediction rows are not checked "
            "against its test splits", run_dir, shards, MANIFEST,
        )  # fmt: skip
        return None
    part = OmegaConf.select(cfg, "inner.fold")
    inner = None if part is None else (int(cfg.inner.folds), int(part), int(cfg.inner.seed))
    return shards, read_manifest(shards), inner


def stray_rows(
    df: pd.DataFrame,
    path: Path,
    fold: int,
    shards: Path,
    manifest: Mapping,
    inner: tuple[int, int, int] | None = None,
) -> None:
    """PgoError naming the file, the line and the patient of the first prediction row whose
    patient is not a test patient of `fold` in the shard set's manifest (a train patient, one
    of no split, a fold the manifest does not have): such a row changes the fold's C-index.
    With `inner` = (K, part, seed) (an inner training of nested selection) the test patients are
    that part of the fold's train patients (hpc_pgo.data.inner, as the training opened them)."""
    folds = (manifest.get("splits") or {}).get("folds") or []
    if not 0 <= fold < len(folds):
        raise PgoError(
            f"{path}: fold {fold} is not a split of shard set {shards} ({len(folds)} splits in "
            "its manifest.json); valid: predictions of a fold of that shard set"
        )
    test = set(folds[fold]["test"])
    if inner is not None:
        from hpc_pgo.data.folds import open_fold
        from hpc_pgo.data.inner import InnerFold

        test = set(open_fold(shards, InnerFold(fold, inner[0], inner[1], inner[2])).test)
    stray = ~df["patient"].isin(test).to_numpy()
    if stray.any():
        i = int(stray.argmax())
        patient = df["patient"].iloc[i]
        what = (
            "a train patient of that fold" if patient in set(folds[fold]["train"])
            else "in neither split of that fold"
        )  # fmt: skip
        raise PgoError(
            f"{path}, line {i + 2}: patient {patient!r} is not a test patient of fold {fold} "
            f"(shard set {shards}: {what}; {int(stray.sum())} such row(s)); valid: rows of the "
            f"fold's {len(test)} test patients only"
        )


def _finite_or_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summarize_run(run_dir: Path) -> tuple[dict, dict[int, pd.DataFrame]]:
    """The summary dict of a run (as summary.json holds it) and its patients per fold."""
    folds = expected_folds(run_dir)
    preds, failed, missing = collect_folds(run_dir, folds)
    per_fold: dict[int, float] = {}
    branch_folds: dict[str, dict[int, float]] = {part: {} for part in BRANCH_PARTS}
    patients: dict[int, pd.DataFrame] = {}
    for k, df in preds.items():
        try:
            patients[k] = patient_hazards(df, where=f"fold {k}")
            per_fold[k] = fold_cindex(df, where=f"fold {k}")
            for part, column in BRANCH_PARTS.items():
                if column in df.columns:
                    branch_folds[part][k] = fold_cindex(
                        df.assign(hazard=df[column]), where=f"fold {k} {column}"
                    )
        except PgoError as err:
            failed[k] = str(err)
            patients.pop(k, None)
            per_fold.pop(k, None)
            for values in branch_folds.values():
                values.pop(k, None)
    digest = config_digest(load_config(run_dir)) if (run_dir / CONFIG_FILE).is_file() else None
    summary = {
        "c_index": cindex_summary(per_fold),
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
        "branches": _branch_summary(branch_folds, per_fold, run_dir),
    }
    return summary, patients


def _branch_summary(
    branch_folds: Mapping[str, Mapping[int, float]], per_fold: Mapping[int, float], run_dir: Path
) -> dict:
    """Each branch part's own C-index over the folds (summary.json "branches").

    {"genomic": {"mean", "ci95", "std", "per_fold"}, "image": {...}} when every scored fold has
    the parts (a concat head over both modalities); otherwise {"note": why there are none}.
    """
    if per_fold and all(set(folds) == set(per_fold) for folds in branch_folds.values()):
        return {part: cindex_summary(folds) for part, folds in branch_folds.items()}
    cfg = load_config(run_dir) if (run_dir / CONFIG_FILE).is_file() else None
    if cfg is None and (run_dir / SELECTION_FILE).is_file():
        note = "a select entry: each fold's parts are those of the candidate it chose"
    elif cfg is not None and "coxph" in str(cfg.launch.fold_fn):
        note = "a CoxPH reference has no branches"
    elif cfg is not None and len(cfg.model.modalities) == 1:
        note = f"one modality ({cfg.model.modalities[0]}): no branch parts"
    elif cfg is not None and cfg.model.fusion == "kronecker":
        note = "kronecker fusion mixes the modalities before the head: theta has no additive split"
    else:
        note = "the predictions hold no hazard_genomic / hazard_image columns"
    return {"note": note}


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
    branches = summary.get("branches") or {}
    if "note" in branches:
        lines.append(f"Branch parts: none ({branches['note']})")
    elif branches:
        parts = "; ".join(
            f"{part} part alone {_fmt(b['mean'])} ± {_fmt(b['ci95'])}"
            for part, b in branches.items()
        )
        lines.append(f"Branch parts of theta (each scored alone, same protocol): {parts}")
    if summary.get("km"):
        km = summary["km"]
        p = "n/a" if km["logrank_p"] is None else f"{km['logrank_p']:.2e}"
        lines.append(
            f"Kaplan-Meier: {km['patients']} unique test patients (each once; {km['rows']} "
            f"fold-patient rows over {km['folds']} fold(s)), high risk {km['high_risk']}, "
            f"low risk {km['low_risk']}; log-rank p = {p}"
        )
    lines += incomplete_lines(summary, "no predictions yet")
    return "\n".join(lines) + "\n"


def incomplete_lines(summary: Mapping, missing_why: str) -> list[str]:
    """summary.md's closing lines: each failed fold with its error, then the missing folds."""
    lines = [f"- fold {k} FAILED: {error}" for k, error in summary["failed_folds"].items()]
    if summary["missing_folds"]:
        shown = ", ".join(str(k) for k in summary["missing_folds"])
        lines.append(f"- missing folds ({missing_why}): {shown}")
    return lines


def plot_modulation(run_dir: Path, folds: list[int], path: Path) -> bool:
    """modulation.png from fold_<k>/modulation.csv: per panel, mean over folds +- 1 std band.

    x is the csv's `step` column (else `epoch`); folds are aligned on x. Returns False (and
    writes nothing) when no fold has a modulation.csv with the MODULATION_PANELS columns.
    """
    frames = []
    for k in folds:
        file = fold_dir(run_dir, k) / MODULATION
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

    panels = {
        panel: [c for c in columns if c in data.columns and data[c].notna().any()]
        for panel, columns in MODULATION_PANELS.items()
    }
    panels = {panel: columns for panel, columns in panels.items() if columns}
    if not panels:
        return False
    fig = Figure(figsize=(4.5 * len(panels), 3.8), dpi=110)
    for i, (panel, columns) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        # a batch's C-index is noisy: that panel shows each fold's epoch mean, then folds
        by = "epoch" if panel.startswith("branch") and "epoch" in data.columns else x
        for column in columns:
            per_fold = data.groupby(["fold", by])[column].mean().reset_index()
            stats = per_fold.groupby(by)[column].agg(["mean", "std"]).fillna(0.0)
            ax.plot(stats.index, stats["mean"], label=column)
            ax.fill_between(
                stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.25
            )
        ax.set_xlabel(by)
        ax.set_title(f"{panel}\n(mean over {data['fold'].nunique()} folds, ±1 std)", fontsize=9)
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
    """Write summary.json, summary.md, km.png and modulation.png of one run (of a seeded
    configuration: write_seed_report); return the summary."""
    run_dir = check_run_path(run_dir)
    seeds = read_seeds(run_dir)
    if seeds is not None:
        return write_seed_report(run_dir, seeds, title)
    return _write_run_report(run_dir, title)[0]


def _write_run_report(run_dir: Path, title: str | None) -> tuple[dict, dict[int, pd.DataFrame]]:
    """write_report of one run directory; (its summary, its patients per fold)."""
    from hpc_pgo.survival.km import HIGH_RISK, KM_RULE, plot_km, risk_groups  # loads matplotlib

    summary, patients = summarize_run(run_dir)
    title = title or run_dir.name
    if patients:
        # Each patient once: the random splits overlap (a patient is tested in ~3 folds).
        unique = risk_groups(patients, where=f"{run_dir} (fold_<k>/predictions.csv)")
        p_value = plot_km(
            unique,
            run_dir / KM_PNG,
            title=f"{title}: test patients of {len(patients)} fold(s)",
            groups=unique["group"],
        )
        high = int((unique["group"] == HIGH_RISK).sum())
        summary["km"] = {
            "patients": len(unique),
            "rows": int(unique["n_folds"].sum()),
            "folds": len(patients),
            "high_risk": high,
            "low_risk": len(unique) - high,
            "logrank_p": _finite_or_none(p_value),
            "rule": KM_RULE,
        }
        summary["km_logrank_p"] = _finite_or_none(p_value)
    summary["modulation_plot"] = plot_modulation(
        run_dir, sorted(patients), run_dir / MODULATION_PNG
    )
    write_text(run_dir / SUMMARY_JSON, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    write_text(run_dir / SUMMARY_MD, summary_markdown(summary, title))
    return summary, patients


def write_seed_report(run_dir: Path, seeds: list[int], title: str | None = None) -> dict:
    """A seeded configuration (seeds.json; hpc_pgo.launch.replicates): each seed_<s>/ gets its own
    report, then run_dir/summary.{json,md} the seed-averaged one (replicates.seed_summary): per
    fold the mean C-index over the seeds, the seed-ensembled hazard's C-index and the seed noise.
    A fold counts when every seed finished it; one that failed in some seed is failed."""
    title = title or run_dir.name
    reports = {
        s: _write_run_report(check_run_path(seed_dir(run_dir, s)), f"{title} seed {s}")
        for s in seeds
    }
    per_seed = {s: summary for s, (summary, _) in reports.items()}
    expected = sorted({int(k) for summary in per_seed.values()
                       for k in [*summary["c_index"]["per_fold"], *summary["failed_folds"],
                                 *summary["missing_folds"]]})  # fmt: skip
    failed: dict[int, str] = {}
    missing: list[int] = []
    ensemble: dict[int, float] = {}
    for k in expected:
        errors = [f"seed {s}: {per_seed[s]['failed_folds'][str(k)]}" for s in seeds
                  if str(k) in per_seed[s]["failed_folds"]]  # fmt: skip
        if errors:
            failed[k] = "; ".join(errors)
        elif any(str(k) not in per_seed[s]["c_index"]["per_fold"] for s in seeds):
            missing.append(k)
        else:
            ensemble[k] = _ensemble_cindex([reports[s][1][k] for s in seeds], k)
    summary = seed_summary(seeds, per_seed, ensemble, failed, missing)
    write_text(run_dir / SUMMARY_JSON, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    write_text(run_dir / SUMMARY_MD, seed_markdown(summary, title))
    return summary


def _ensemble_cindex(tables: list[pd.DataFrame], fold: int) -> float:
    """C-index of fold `fold` with each test patient's hazard averaged over the seeds' models
    (tables: each seed's patient hazards of that fold, as summarize_run gives them)."""
    joined = pd.concat(tables).groupby("patient", sort=True).agg(
        hazard=("hazard", "mean"), time=("time", "first"), event=("event", "first")
    ).reset_index()
    return fold_cindex(joined.assign(unit=joined["patient"]), where=f"seed ensemble fold {fold}")


def seed_markdown(summary: Mapping, title: str) -> str:
    """summary.md of a seeded configuration: per fold each seed's C-index and their mean, then
    the seed-averaged mean ± ci95, the ensemble's, and the noise floor."""
    seeds = summary["seeds"]["seeds"]
    per = summary["seeds"]["per_fold_per_seed"]
    c = summary["c_index"]
    head = ["fold", *(f"seed {s}" for s in seeds), "mean over seeds", "seed ensemble"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for k, value in c["per_fold"].items():
        cells = [k, *(f"{per[str(s)][k]:.4f}" for s in seeds), f"{value:.4f}",
                 f"{summary['ensemble']['per_fold'][k]:.4f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    noise = summary["seeds"]
    e = summary["ensemble"]
    lines += [
        "",
        f"C-index over {summary['n_folds']} fold(s), each the mean over {len(seeds)} seed(s): "
        f"{_fmt(c['mean'])} ± {_fmt(c['ci95'])} (95% CI half-width, t with n-1 df); std "
        f"{_fmt(c['std'])}",
        f"Seed-ensembled hazard: {_fmt(e['mean'])} ± {_fmt(e['ci95'])}",
        f"Seed noise: SD across seeds of the mean C-index {_fmt(noise['sd_of_mean'])}; per-fold "
        f"seed SD {_fmt(noise['per_fold_seed_sd'])}; mean per seed: "
        + ", ".join(f"{s}: {_fmt(v)}" for s, v in noise["mean_per_seed"].items()),
    ]
    lines += incomplete_lines(summary, "not finished in every seed")
    return "\n".join(lines) + "\n"


def sweep_paired(sweep: Mapping, summaries: Mapping[str, Mapping]) -> dict[str, dict]:
    """Every entry against the sweep's reference, fold by fold (hpc_pgo.survival.paired); {} when
    the sweep names none. Entries sharing no finished fold with the reference get {"note"}."""
    from hpc_pgo.survival.paired import paired_difference

    reference = sweep.get("reference")
    if not reference:
        return {}
    ref_folds = summaries[reference]["c_index"]["per_fold"]
    out = {}
    for run in sweep["runs"]:
        name = run["name"]
        if name == reference:
            continue
        folds = summaries[name]["c_index"]["per_fold"]
        if not set(folds) & set(ref_folds):
            out[name] = {"note": f"no finished fold in common with {reference}"}
            continue
        result = paired_difference(
            {int(k): v for k, v in folds.items()}, {int(k): v for k, v in ref_folds.items()}
        )
        out[name] = {k: _finite_or_none(v) for k, v in result.items()}
        if summaries[name].get("seeds") and summaries[reference].get("seeds"):
            noise = paired_seed_noise(summaries[name], summaries[reference], result["folds"])
            out[name]["seed_sd"] = noise["seed_sd"]
            out[name]["per_seed_mean"] = noise["deltas"]
            out[name]["below_seed_noise"] = (
                None if noise["seed_sd"] is None else abs(result["mean"]) < noise["seed_sd"]
            )
    return out


def _paired_cells(paired: Mapping | None) -> list[str]:
    """Δ (95% CI), wins/n, Wilcoxon p of one entry; the reference's own row gets 'reference'."""
    if paired is None:
        return ["reference", "", ""]
    if "note" in paired:
        return [paired["note"], "", ""]
    low = None if paired["ci95"] is None else paired["mean"] - paired["ci95"]
    high = None if paired["ci95"] is None else paired["mean"] + paired["ci95"]
    noise = f" (< seed SD {paired['seed_sd']:.3f}: noise)" if paired.get("below_seed_noise") else ""
    return [
        f"{paired['mean']:+.3f} [{_fmt(low)}, {_fmt(high)}]{noise}",
        f"{paired['wins']}/{paired['n']}",
        f"{paired['wilcoxon_p']:.3g}",
    ]


def sweep_table(
    sweep: Mapping,
    summaries: Mapping[str, Mapping],
    paired: Mapping[str, Mapping] | None = None,
    selections: Mapping[str, Mapping] | None = None,
) -> str:
    """The sweep side by side, as the paper's table: one row per configuration, its labels, the
    C-index, each branch part's own C-index, and (with a reference) the paired comparison."""
    paired = paired or {}
    columns = list(sweep["columns"])
    head = ["run", *columns, "C-index (mean ± ci95)", "genomic part", "image part", "std",
            "folds", "failed"]  # fmt: skip
    reference = sweep.get("reference")
    seeded = any(summaries[run["name"]].get("seeds") for run in sweep["runs"])
    if seeded:
        head += ["seed SD (row / per fold)", "seed ensemble"]
    if reference:
        head += [f"Δ vs {reference} [95% CI]", "wins", "Wilcoxon p"]
    lines = [f"# {sweep['title']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in sweep["runs"]:
        s = summaries[run["name"]]
        c = s["c_index"]
        branches = s.get("branches") or {}
        parts = [
            f"{_fmt(branches[p]['mean'])} ± {_fmt(branches[p]['ci95'])}"
            if p in branches else "n/a"
            for p in BRANCH_PARTS
        ]  # fmt: skip
        labels = [str(run["labels"].get(col, "")) for col in columns]
        cells = [run["name"], *labels, f"{_fmt(c['mean'])} ± {_fmt(c['ci95'])}", *parts,
                 _fmt(c["std"]), str(s["n_folds"]), str(len(s["failed_folds"]))]  # fmt: skip
        if seeded:
            noise, e = s.get("seeds") or {}, s.get("ensemble") or {}
            cells += [
                f"{_fmt(noise.get('sd_of_mean'))} / {_fmt(noise.get('per_fold_seed_sd'))}"
                if noise else "n/a",
                f"{_fmt(e.get('mean'))} ± {_fmt(e.get('ci95'))}" if e else "n/a",
            ]
        if reference:
            cells += _paired_cells(paired.get(run["name"]))
        lines.append("| " + " | ".join(cells) + " |")
    if reference:
        lines += [
            "",
            f"Δ: per-fold paired difference in C-index against {reference} over the folds both "
            "finished (mean, 95% t interval); wins: folds where the entry is higher; p: Wilcoxon "
            "signed-rank, two-sided.",
        ]
        uneven = {
            name: p for name, p in paired.items()
            if "n" in p and (p["only_candidate"] or p["only_reference"])
        }  # fmt: skip
        for name, p in uneven.items():
            lines.append(f"- {name}: compared on {p['n']} common folds")
    notes = {
        run["name"]: summaries[run["name"]]["branches"]["note"]
        for run in sweep["runs"]
        if "note" in (summaries[run["name"]].get("branches") or {})
    }
    for name, note in notes.items():
        lines.append(f"- {name}: branch parts n/a ({note})")
    if seeded:
        seeds = next(summaries[r["name"]]["seeds"]["seeds"] for r in sweep["runs"]
                     if summaries[r["name"]].get("seeds"))  # fmt: skip
        lines.append(
            f"- seeds {', '.join(map(str, seeds))}: each fold's C-index is the mean over the "
            "seeds, and Δ pairs those means; seed SD: across seeds of the row's mean C-index / "
            "per fold; a Δ marked noise is smaller than the SD across seeds of the per-seed Δ"
        )
    for name, selection in (selections or {}).items():
        counts = ", ".join(f"{c} {n}" for c, n in selection["counts"].items())
        lines.append(
            f"- {name}: chosen per outer fold by {selection['inner_folds']}-fold inner CV on its "
            f"train patients (times chosen: {counts})"
        )
        for seed, chosen in selection["choices"].items():
            shown = ", ".join(f"{k}: {c}" for k, c in sorted(chosen.items(), key=lambda i: int(i[0])))
            lines.append(f"  - {'' if seed == '-' else f'seed {seed}: '}{shown}")
    return "\n".join(lines) + "\n"


def write_sweep_report(run_dir: str | os.PathLike) -> dict:
    """Each sub-run's report, then sweep.md and sweep_summary.json side by side; returns the latter
    ({"sweep", "reference", "runs": {name: summary}, "paired": {name: paired difference}})."""
    run_dir = Path(run_dir).resolve()
    sweep = json.loads((run_dir / SWEEP_FILE).read_text(encoding="utf-8"))
    selections = {
        run["name"]: write_selection(run_dir, run, sweep) for run in sweep["runs"]
        if run.get("select")
    }  # fmt: skip
    summaries = {
        run["name"]: write_report(run_dir / run["name"], title=run["name"]) for run in sweep["runs"]
    }
    paired = sweep_paired(sweep, summaries)
    write_text(run_dir / SWEEP_MD, sweep_table(sweep, summaries, paired, selections))
    result = {
        "sweep": sweep["name"],
        "reference": sweep.get("reference"),
        "runs": summaries,
        "paired": paired,
        "selection": selections,
    }
    write_text(run_dir / SWEEP_JSON, json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def check_run_path(run_dir: str | os.PathLike) -> Path:
    """run_dir resolved, or PgoError when it does not exist or is not a directory."""
    path = Path(run_dir).resolve()
    if not path.exists():
        raise PgoError(
            f"run directory {path} does not exist; valid: a run directory of launch/submit.py"
        )
    if not path.is_dir():
        raise PgoError(
            f"{path} is a file, not a run directory; valid: the directory launch/submit.py "
            "printed (holding config.yaml and fold_<k>/), not a file in it"
        )
    return path


def report_run(run_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """Write the report of a run or a sweep; return (the Markdown table to print, the folds
    that failed or are missing, as '[<sweep run>/]fold_<k>: failed|missing')."""
    run_dir = check_run_path(run_dir)
    if (run_dir / SWEEP_FILE).is_file():
        result = write_sweep_report(run_dir)
        summaries = {f"{name}/": summary for name, summary in result["runs"].items()}
        text = (run_dir / SWEEP_MD).read_text(encoding="utf-8")
    else:
        summaries = {"": write_report(run_dir)}
        text = (run_dir / SUMMARY_MD).read_text(encoding="utf-8")
    incomplete = [
        f"{prefix}fold_{k}: {what}"
        for prefix, summary in summaries.items()
        for what, folds in (
            ("failed", summary["failed_folds"]),
            ("missing", summary["missing_folds"]),
        )
        for k in folds
    ]
    return text, incomplete


def report(run_dir: str | os.PathLike) -> str:
    """Write the report of a run or a sweep; return the Markdown table to print."""
    return report_run(run_dir)[0]


class ReportJob:
    """A picklable callable that writes the report of run_dir (the Slurm aggregation job)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        return report(self.run_dir)
