#!/usr/bin/env python
"""Does RNA help the genomic model on TCGA-KIRC? Candidates picked on validation patients only.

Two steps, on the 15 random 80/20 splits of data=tcga_kirc (built from the PORPOISE table as
benchmarks/real_kirc.py builds it, when shards/tcga_kirc is missing):

  select   every candidate RNA front end of CANDIDATES, trained on every fold with
           train.val_fraction (default 0.2) of the fold's TRAIN patients held out; prints, per
           candidate, the mean over the folds of the validation C-index at the chosen epoch
           (the procedure's own criterion), at the final epoch, and the mean chosen epoch.
           The test patients' C-index is not read: nothing here looks at it. The winner is
           the candidate with the highest mean validation C-index at the chosen epoch.
  final    the comparison table: genomic with RNA (the model=genomic default), genomic without
           RNA (model.genomic.rna_encoder=none), each with the epoch chosen on validation
           patients and as the default trains them (train.val_fraction=0, final epoch);
           lifelines' penalised CoxPH on the same features (cnv+mut+rna, 32 train-fitted PCs)
           and on CNV+mut alone (32 PCs), all on the same splits; mean +- 95% t CI over the
           folds, and paired differences (hpc_pgo.survival.paired: mean delta [95% CI],
           wins/n, Wilcoxon p) of genomic+RNA against penalised Cox and against no RNA.

    .venv/bin/python benchmarks/kirc_rna.py select [--workers 2] [--out runs/kirc_rna]
    .venv/bin/python benchmarks/kirc_rna.py final  [--workers 2] [--out runs/kirc_rna]

Folds run as train_fold calls in a small pool of processes (each trains its folds in turn;
cluster=local's submitit path costs an interpreter start per fold, which is most of an omics
fold's time). Run directories: <out>/<step>/<configuration>/fold_<k>/ as a launched run writes
them; a finished fold is not trained again.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from real_kirc import DEFAULT_TABLE, build_flags  # noqa: E402

BASE = ("data=tcga_kirc", "model=genomic", "train.num_workers=0")
# candidate RNA front ends of the genomic model (rna_encoder=snn unless said), picked on validation
CANDIDATES: dict[str, tuple[str, ...]] = {
    "snn (old default)": (),
    "no RNA": ("model.genomic.rna_encoder=none",),
    "input dropout 0.5": ("model.genomic.rna_input_dropout=0.5",),
    "input dropout 0.5, SNN [32]": (
        "model.genomic.rna_input_dropout=0.5",
        "model.genomic.rna_snn.hidden=[32]",
    ),
    "SNN [16]": ("model.genomic.rna_snn.hidden=[16]",),
    "PCA 16": ("model.genomic.rna_pcs=16",),
    "PCA 32": ("model.genomic.rna_pcs=32",),
    "PCA 32, SNN [32]": ("model.genomic.rna_pcs=32", "model.genomic.rna_snn.hidden=[32]"),
    "PCA 64, SNN [32]": ("model.genomic.rna_pcs=64", "model.genomic.rna_snn.hidden=[32]"),
}


# printed names of the rows (the keys name the run directories)
LABELS = {
    "genomic + RNA (default)": "genomic + RNA, epoch chosen on validation",
    "genomic, no RNA": "genomic, no RNA, epoch chosen on validation",
    "genomic + RNA, final epoch": "genomic + RNA (default: val_fraction 0, final epoch)",
    "genomic, no RNA, final epoch": "genomic, no RNA (val_fraction 0, final epoch)",
}


def _train(job: tuple[tuple[str, ...], int, str]) -> dict:
    """One fold in this worker process (single-threaded torch: the pool is the parallelism)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from hpc_pgo.config import compose
    from hpc_pgo.train.fold import train_fold

    tokens, fold, run_dir = job
    return train_fold(compose(list(tokens)), fold, Path(run_dir))


def run_folds(configs: dict[str, tuple[str, ...]], out: Path, workers: int) -> dict[str, dict]:
    """Train every configuration on every fold; name -> {fold: metrics}."""
    jobs = [(name, k) for name in configs for k in range(15)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_train, [(configs[n], k, str(out / slug(n))) for n, k in jobs])
        metrics: dict[str, dict] = {}
        for (name, k), m in zip(jobs, results, strict=True):
            metrics.setdefault(name, {})[k] = m
    return metrics


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def ensure_shards(table: Path) -> Path:
    from hpc_pgo.config import compose
    from hpc_pgo.data.cli import main as pgo_shards

    shards = Path(str(compose(list(BASE)).data.shards)).resolve()
    if not (shards / "manifest.json").is_file():
        if not table.is_file():
            raise SystemExit(f"error: {table} not found; valid: --table PATH of the KIRC table")
        assert pgo_shards(build_flags(table, shards)) == 0
    return shards


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def select(out: Path, workers: int, val_fraction: float) -> None:
    configs = {n: (*BASE, f"train.val_fraction={val_fraction}", *t) for n, t in CANDIDATES.items()}
    metrics = run_folds(configs, out / "select", workers)
    print(f"\nValidation only ({val_fraction:g} of each fold's train patients; 15 folds): mean")
    print("| candidate | val C at chosen epoch | val C at last epoch | chosen epoch (0-based) |")
    print("|---|---|---|---|")
    rows = []
    for name, folds in metrics.items():
        chosen = _mean([m["val_cindex"] for m in folds.values()])
        last = _mean([m["val_cindex_per_epoch"][-1] for m in folds.values()])
        epoch = _mean([m["chosen_epoch"] for m in folds.values()])
        rows.append((chosen, name))
        print(f"| {name} | {chosen:.3f} | {last:.3f} | {epoch:.1f} |")
    print(f"winner (highest val C at chosen epoch): {max(rows)[1]}")


def final(out: Path, workers: int, val_fraction: float, shards: Path) -> None:
    from hpc_pgo.survival import fold_cindex, summarize_cindex
    from hpc_pgo.survival.paired import paired_difference
    from hpc_pgo.train.coxph import coxph_fold_predictions

    vf = f"train.val_fraction={val_fraction}"
    nets = {
        "genomic + RNA (default)": (*BASE, vf),
        "genomic, no RNA": (*BASE, vf, "model.genomic.rna_encoder=none"),
        # as before train.val_fraction existed: the final epoch's weights, all train patients
        "genomic + RNA, final epoch": (*BASE, "train.val_fraction=0"),
        "genomic, no RNA, final epoch": (
            *BASE,
            "train.val_fraction=0",
            "model.genomic.rna_encoder=none",
        ),
    }
    metrics = run_folds(nets, out / "final", workers)
    per_fold = {name: {k: m["cindex"] for k, m in folds.items()} for name, folds in metrics.items()}
    for name, groups in (
        ("CoxPH cnv+mut+rna, 32 PCs", ["cnv", "mut", "rna"]),
        ("CoxPH cnv+mut, 32 PCs", ["cnv", "mut"]),
    ):
        per_fold[name] = {
            k: fold_cindex(coxph_fold_predictions(shards, k, groups, penalizer=1.0, pcs=32))
            for k in range(15)
        }
    ref_cox = "CoxPH cnv+mut+rna, 32 PCs"
    # each genomic + RNA row is paired with the no-RNA row trained the same way
    no_rna = {
        "genomic + RNA (default)": "genomic, no RNA",
        "genomic + RNA, final epoch": "genomic, no RNA, final epoch",
    }
    print(
        "\nTCGA-KIRC, 15 random 80/20 splits; rows without 'final epoch' select their epoch on "
        f"{val_fraction:g} of each fold's train patients"
    )
    print(
        "| configuration | C-index mean ± 95% CI | Δ vs penalised Cox [95% CI], wins, p "
        "| Δ vs the same without RNA [95% CI], wins, p |"
    )
    print("|---|---|---|---|")

    def delta(values: dict, ref: str) -> str:
        d = paired_difference(values, per_fold[ref])
        low, high = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
        return f"{d['mean']:+.3f} [{low:+.3f}, {high:+.3f}], {d['wins']}/{d['n']}, p={d['wilcoxon_p']:.2g}"

    for name, values in per_fold.items():
        s = summarize_cindex(values)
        vs_cox = "reference" if name == ref_cox else delta(values, ref_cox)
        vs_none = delta(values, no_rna[name]) if name in no_rna else ""
        label = LABELS.get(name, name)
        print(f"| {label} | {s['mean']:.3f} ± {s['ci95']:.3f} | {vs_cox} | {vs_none} |")
    print("\nper fold: " + " | ".join(per_fold))
    for k in range(15):
        print(f"{k:>4}  " + "  ".join(f"{per_fold[n][k]:.3f}" for n in per_fold))
    chosen = [m["chosen_epoch"] for m in metrics["genomic + RNA (default)"].values()]
    print(f"genomic + RNA chosen epochs (0-based): {chosen}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=("select", "final"))
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "kirc_rna")
    parser.add_argument("--workers", type=int, default=2, help="fold processes at a time")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    args = parser.parse_args()
    shards = ensure_shards(args.table)
    if args.step == "select":
        select(args.out.resolve(), args.workers, args.val_fraction)
    else:
        final(args.out.resolve(), args.workers, args.val_fraction, shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
