#!/usr/bin/env python
"""Nested selection on a real cohort: sweep=genomic_select over 15 folds, read back as one table.

1. Builds the data config's shard set when it is missing: data=tcga_kirc from the PORPOISE table
   (benchmarks/real_kirc.py build_flags, --kirc-table), data=survset_<x> with `pgo-shards survset
   --dataset <X>` (hpc_pgo/data/survset.py; needs `pip install survset`).
2. Runs `launch/submit.py data=<d> model=genomic sweep=<sweep> folds=0-14 train.num_workers=0
   cluster.folds_per_process=30 run_dir=<out> [key=value ...]` through hpc_pgo.launch (submit,
   wait, report). On a cohort whose only omics group is `rna` it puts model.genomic.groups=[] and
   coxph.groups=[rna] before the extra tokens (which win) and the sweep defaults to
   genomic_select_rna (genomic_select without rna-none, which would have no input there); it
   prints what it added.
3. Prints from <out>/sweep_summary.json: each fixed candidate, the selected entry and the CoxPH
   (mean C-index ± 95% t half-width; paired Δ vs CoxPH with its 95% CI, wins/n, Wilcoxon p), the
   selected entry against the fixed candidate with the highest mean test C-index (paired; that
   candidate is named after the fact, it chooses nothing), and how often inner CV chose each one.

    .venv/bin/python benchmarks/nested_selection.py --data survset_dlbcl --out runs/dlbcl_select
    .venv/bin/python benchmarks/nested_selection.py --data tcga_kirc --out runs/kirc_select inner.folds=3
    .venv/bin/python benchmarks/nested_selection.py --data tcga_kirc --out runs/kirc_select --table-only

Extra key=value tokens go to every configuration of the sweep (e.g. inner.folds=3 train.epochs=20).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_KIRC = REPO.parent / "shared" / "data" / "tcga-kirc" / "tcga_kirc_all_clean.csv.gz"
SURVSET_PREFIX = "survset_"
RNA_ONLY_TOKENS = ["model.genomic.groups=[]", "coxph.groups=[rna]"]


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def build_if_missing(data: str, shards: Path, kirc_table: Path) -> None:
    """Build the shard set of data=<data> at `shards` when it has no manifest.json."""
    if (shards / "manifest.json").is_file():
        return
    from hpc_pgo.data.cli import main as pgo_shards

    if data == "tcga_kirc":
        from real_kirc import build_flags

        if not kirc_table.is_file():
            raise SystemExit(f"error: {kirc_table} not found; valid: --kirc-table PATH")
        flags = build_flags(kirc_table, shards)
    elif data.startswith(SURVSET_PREFIX):
        from SurvSet.data import SurvLoader

        names = {str(n).lower(): str(n) for n in SurvLoader().df_ds["ds"]}
        key = data[len(SURVSET_PREFIX) :]
        if key not in names:
            raise SystemExit(f"error: data={data}: no SurvSet data set {key!r}")
        flags = ["survset", "--dataset", names[key], "--out", str(shards), "--no-progress"]
    else:
        raise SystemExit(f"error: {shards} is not built and this script builds only tcga_kirc "
                         f"and survset_<name>; build it first (shards/README.md)")  # fmt: skip
    print(f"building {shards}: pgo-shards {' '.join(flags)}", flush=True)
    if pgo_shards(flags) != 0:
        raise SystemExit(f"error: building {shards} failed")


def table(summary: dict) -> str:
    """The comparison table of a sweep_summary.json (module text, step 3)."""
    from hpc_pgo.survival.paired import paired_difference

    runs, paired = summary["runs"], summary.get("paired") or {}
    reference = summary.get("reference")
    selections = summary.get("selection") or {}
    selected = next(iter(selections), None)
    fixed = [n for n in runs if n not in selections and n != reference]
    order = [*fixed, *([selected] if selected else []), *([reference] if reference else [])]
    head = f"{'entry':<12} {'folds':>5}  {'C (mean ± ci95)':<16} {'Δ vs ' + str(reference) + ' [95% CI]':<26} {'wins/n':>6} {'Wilcoxon p':>10}"  # noqa: E501
    lines = [head, "-" * len(head)]
    for name in order:
        s = runs[name]
        c = s["c_index"]
        p = paired.get(name) or {}
        if "n" in p:
            lo, hi = (
                (p["mean"] - p["ci95"], p["mean"] + p["ci95"])
                if p["ci95"] is not None and not math.isnan(p["ci95"])
                else (None, None)
            )  # noqa: E501
            delta = f"{p['mean']:+.3f} [{_fmt(lo, '+.3f')}, {_fmt(hi, '+.3f')}]"
            wins, pv = f"{p['wins']}/{p['n']}", _fmt(p["wilcoxon_p"], ".3g")
        else:
            delta, wins, pv = ("(reference)" if name == reference else "n/a"), "", ""
        lines.append(f"{name:<12} {s['n_folds']:>5}  {_fmt(c['mean']) + ' ± ' + _fmt(c['ci95']):<16} "
                     f"{delta:<26} {wins:>6} {pv:>10}")  # fmt: skip
    if selected:

        def per_fold(name: str) -> dict[int, float]:
            return {int(k): v for k, v in runs[name]["c_index"]["per_fold"].items()}

        candidates = [n for n in runs if n != selected]
        best = max(candidates, key=lambda n: runs[n]["c_index"]["mean"]
                   if runs[n]["c_index"]["mean"] is not None else -1)  # fmt: skip
        d = paired_difference(per_fold(selected), per_fold(best))
        lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
        lines += [
            "",
            f"{selected} vs the best fixed candidate after the fact ({best}, highest mean test C; "
            f"named here only, it chooses nothing): Δ {d['mean']:+.3f} [{_fmt(lo, '+.3f')}, "
            f"{_fmt(hi, '+.3f')}], wins {d['wins']}/{d['n']} (ties {d['ties']}), Wilcoxon p "
            f"{_fmt(d['wilcoxon_p'], '.3g')}",
        ]
        sel = selections[selected]
        counts = ", ".join(f"{c} {n}" for c, n in sel["counts"].items())
        lines.append(f"times chosen by {sel['inner_folds']}-fold inner CV ({sum(sel['counts'].values())} "
                     f"outer folds): {counts}")  # fmt: skip
        for seed, chosen in sel["choices"].items():
            shown = ", ".join(
                f"{k}:{c}" for k, c in sorted(chosen.items(), key=lambda i: int(i[0]))
            )
            lines.append(f"  {'' if seed == '-' else f'seed {seed}: '}{shown}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="data config, e.g. survset_dlbcl, tcga_kirc")
    parser.add_argument("--out", type=Path, required=True, help="the run directory (run_dir=)")
    parser.add_argument("--sweep", help="default genomic_select (genomic_select_rna on an "
                        "RNA-only cohort)")  # fmt: skip
    parser.add_argument("--folds", default="0-14", help="outer folds (default 0-14)")
    parser.add_argument("--kirc-table", type=Path, default=DEFAULT_KIRC,
                        help="PORPOISE TCGA-KIRC table for data=tcga_kirc")  # fmt: skip
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of an existing --out (rewrites its report)")  # fmt: skip
    parser.add_argument("opts", nargs="*", help="more config tokens, e.g. inner.folds=3")
    args = parser.parse_args()

    from hpc_pgo.config import compose
    from hpc_pgo.launch.report import report
    from hpc_pgo.launch.submission import submit, wait

    out = args.out.resolve()
    if not args.table_only:
        shards = Path(str(compose([f"data={args.data}", "model=genomic"]).data.shards)).resolve()
        build_if_missing(args.data, shards, args.kirc_table)
        groups = json.loads((shards / "manifest.json").read_text())["groups"]
        auto = RNA_ONLY_TOKENS if list(groups) == ["rna"] else []
        sweep = args.sweep or ("genomic_select_rna" if auto else "genomic_select")
        tokens = [f"data={args.data}", "model=genomic", f"sweep={sweep}", f"folds={args.folds}",
                  "train.num_workers=0", "cluster.folds_per_process=30", f"run_dir={out}",
                  *auto, *args.opts]  # fmt: skip
        if auto:
            print(f"cohort groups {list(groups)} (RNA only): added {' '.join(auto)}, sweep={sweep}")
        print("launch/submit.py " + " ".join(tokens), flush=True)
        start = time.monotonic()
        sub = submit(tokens)
        print(f"run directory: {sub.run_dir}; {len(sub.array.tasks)} tasks", flush=True)
        states = wait(sub, progress=True)
        print(f"wall time: {time.monotonic() - start:.0f} s; tasks {states}", flush=True)
    report(out)  # writes sweep.md and sweep_summary.json (the selection included)
    summary = json.loads((out / "sweep_summary.json").read_text())
    print(f"\n{args.data}: {out}/sweep_summary.json\n")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
