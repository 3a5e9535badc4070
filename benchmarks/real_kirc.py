#!/usr/bin/env python
"""Real data through the whole path: TCGA-KIRC omics, 15 folds, against a penalised CoxPH.

1. Builds the shard set of data=tcga_kirc (configs/data/tcga_kirc.yaml: data.shards) from the
   PORPOISE table (--table, default ../shared/data/tcga-kirc/tcga_kirc_all_clean.csv.gz beside
   the checkout) with the shipped spec configs/cohorts/tcga_kirc_porpoise.yaml when it is
   missing: cnv, mut and rna groups, 15 random 80/20 patient splits.
2. Runs `launch/submit.py data=tcga_kirc model=genomic folds=0-14` through hpc_pgo.launch
   (cluster=local unless given otherwise) and waits for its report.
3. Baseline, same run: lifelines' CoxPHFitter with a ridge penalty on the same 15 splits and
   the same features (the genomic model's groups, z-scored with each fold's train statistics),
   one row per patient, C-index by the same protocol (hpc_pgo.survival). With ~2500 features
   for ~276 train patients lifelines' Newton steps diverge (NaN) and each fit takes minutes, so
   by default the CoxPH sees the first 32 principal components of those features, fitted on
   each fold's train patients (--pcs 0: the raw features).
Prints both summaries side by side: mean +- ci95, std, and the per-fold C-index.

    .venv/bin/python benchmarks/real_kirc.py [--penalizer 1.0] [key=value ...]

Extra key=value tokens go to the config (e.g. train.epochs=10 cluster=slurm_cpu).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TABLE = REPO.parent / "shared" / "data" / "tcga-kirc" / "tcga_kirc_all_clean.csv.gz"


def build_flags(table: Path, out: Path) -> list[str]:
    """pgo-shards build flags: the shipped PORPOISE spec (configs/cohorts/tcga_kirc_porpoise.yaml:
    one row per slide, omics repeated; cnv, mut, rna; 15 random splits) on `table`."""
    spec = REPO / "configs" / "cohorts" / "tcga_kirc_porpoise.yaml"
    return [
        "build", "--spec", str(spec), "--survival", str(table), "--no-progress", "--out", str(out),
    ]  # fmt: skip


def cox_baseline(
    shards: Path, groups: list[str], folds: list[int], penalizer: float, pcs: int
) -> dict[int, float]:
    """Ridge-penalised CoxPH per fold (hpc_pgo.train.coxph, the sweep's reference entry) on the
    z-scored omics of `groups`, projected on `pcs` principal components of the fold's train
    patients when pcs > 0; C-index per fold."""
    from hpc_pgo.survival import fold_cindex
    from hpc_pgo.train.coxph import coxph_fold_predictions

    return {
        fold: fold_cindex(
            coxph_fold_predictions(shards, fold, groups, penalizer=penalizer, pcs=pcs),
            where=f"CoxPH fold {fold}",
        )
        for fold in folds
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--table", type=Path, default=DEFAULT_TABLE, help="the PORPOISE TCGA-KIRC table"
    )
    parser.add_argument(
        "--penalizer", type=float, default=1.0, help="lifelines ridge penalty (default 1.0)"
    )
    parser.add_argument(
        "--pcs",
        type=int,
        default=32,
        help="CoxPH on this many principal components of the features (default 32; 0: the raw "
        "features, ~2500 columns: slow, and lifelines' Newton steps diverge on them)",
    )
    parser.add_argument("opts", nargs="*", help="more config tokens, e.g. train.epochs=10")
    args = parser.parse_args()

    from hpc_pgo.config import compose
    from hpc_pgo.data.cli import main as pgo_shards
    from hpc_pgo.launch.submission import submit, wait
    from hpc_pgo.survival import summarize_cindex

    tokens = ["data=tcga_kirc", "model=genomic", "folds=0-14", *args.opts]
    cfg = compose(tokens)
    shards = Path(str(cfg.data.shards)).resolve()
    if not (shards / "manifest.json").is_file():
        if not args.table.is_file():
            print(
                f"error: {args.table} not found; valid: --table PATH of tcga_kirc_all_clean.csv.gz",
                file=sys.stderr,
            )
            return 2
        assert pgo_shards(build_flags(args.table, shards)) == 0
    groups = list(cfg.model.genomic.groups) + (
        [str(cfg.model.genomic.rna_group)] if cfg.model.genomic.rna_encoder == "snn" else []
    )

    sub = submit(tokens)
    print(f"run directory: {sub.run_dir}; job ids: {' '.join(sub.array.job_ids())}")
    wait(sub, progress=True)
    from hpc_pgo.launch.report import write_report

    model = write_report(sub.run_dir)
    folds = [int(k) for k in cfg.folds]
    cox = summarize_cindex(cox_baseline(shards, groups, folds, args.penalizer, args.pcs))

    def row(name: str, s: dict) -> str:
        ci95 = s.get("ci95")
        ci95 = "n/a" if ci95 is None or ci95 != ci95 else f"{ci95:.3f}"
        return f"{name:<34} {s['mean']:.3f} ± {ci95}   std {s['std']:.3f}"

    print(f"\nTCGA-KIRC, 15 splits, features {'+'.join(groups)} ({len(folds)} folds)")
    print(row(f"genomic model ({cfg.groups.model}, hpc_pgo)", model["c_index"]))
    print(row(f"CoxPH ridge {args.penalizer:g}, {args.pcs} PCs (lifelines)", cox))
    print(f"failed folds: {model['failed_folds'] or 'none'}")
    print("\nfold  model   CoxPH")
    for k in folds:
        m = model["c_index"]["per_fold"].get(str(k))
        print(f"{k:>4}  {'  n/a' if m is None else f'{m:.3f}'}   {cox['per_fold'][k]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
