"""`pgo-shards survset`: a gene-expression survival cohort of the SurvSet package as a shard set.

SurvSet (PyPI `survset`, github.com/ErikinBC/SurvSet) ships ~80 survival data sets inside the
package, each read by its own loader, ``SurvLoader().load_dataset(name)["df"]``: one row per
patient with `pid`, `event` (1 = death observed), `time` (the source's unit), `num_<x>` (numeric
features) and `fac_<x>` (categorical ones). This module writes such a frame as the files
`pgo-shards build` takes and builds them:

    survival.csv   patient, time, event                (patient = "<dataset>-<pid>")
    rna.csv        patient, <x>_rnaseq for every num_<x> column   (group `rna`)
    cohort.yaml    the spec: 15 seeded random 80/20 patient splits (seed 0), missing: drop,
                   as configs/cohorts/tcga_kirc_porpoise.yaml

Every `num_` column goes into `rna`, so only expression cohorts whose numeric columns are all
expression values fit as they are (DLBCL, DBCD, AML_Bull, chop, vdv: no clinical columns);
`fac_` columns (categorical clinical) are left out and counted in the summary line.
Time-dependent sets (`time2`) are refused. The files go to --cohort-dir when given (kept), else to
`.<out>.survset-cohort` beside the output, removed after the build (a fixed name, so the manifest
is the same on every run).

    pgo-shards survset --dataset DLBCL --out shards/survset_dlbcl      # data=survset_dlbcl
"""

from __future__ import annotations

import argparse
import math
import numbers
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from hpc_pgo.errors import PgoError

__all__ = ["SPLITS", "load_frame", "write_cohort", "add_survset_parser"]

SPLITS = {"kind": "random", "n": 15, "test_fraction": 0.2, "seed": 0}
RNA_SUFFIX = "_rnaseq"


def _where(dataset: str) -> str:
    return f"SurvSet dataset {dataset!r} (SurvSet/resources/pickles/{dataset}.pickle)"


def load_frame(dataset: str):
    """SurvSet's frame of `dataset` through its own loader; PgoError when survset is missing or
    the name is not one of its data sets (listing the valid ones)."""
    try:
        from SurvSet.data import SurvLoader
    except ImportError as err:
        raise PgoError(
            "pgo-shards survset needs the SurvSet package; install it: pip install survset "
            "(pinned in constraints.txt, extra [benchmarks])"
        ) from err
    loader = SurvLoader()
    names = [str(n) for n in loader.df_ds["ds"]]
    if dataset not in names:
        raise PgoError(
            f"--dataset {dataset!r} is not a SurvSet data set; valid: {', '.join(names)}"
        )
    return loader.load_dataset(dataset)["df"]


def _check(frame, dataset: str) -> list[str]:
    """The num_ columns of a valid frame; PgoError naming the dataset, row and column otherwise."""
    where = _where(dataset)
    missing = [c for c in ("pid", "event", "time") if c not in frame.columns]
    if missing:
        raise PgoError(
            f"{where}: no column {missing[0]!r}; columns: {', '.join(frame.columns[:8])}"
        )
    if "time2" in frame.columns:
        raise PgoError(f"{where}: has time-varying rows (time, time2); valid: a set with one row "
                       "per patient (SurvLoader().df_ds is_td False)")  # fmt: skip
    num = [c for c in frame.columns if str(c).startswith("num_")]
    if not num:
        raise PgoError(f"{where}: no numeric feature column (num_*); valid: an expression data set")
    seen: dict[str, int] = {}
    for row, (pid, time, event) in enumerate(
        zip(frame["pid"], frame["time"], frame["event"], strict=True)
    ):
        text = str(pid)
        at = f"{where}, row {row} (pid {text})"
        if not text or any(ch in text for ch in "./") or any(ch.isspace() for ch in text):
            raise PgoError(
                f"{at}: pid {text!r} is not a valid patient id; valid: no '.', '/', space"
            )
        if text in seen:
            raise PgoError(f"{at}: pid repeats row {seen[text]}; valid: one row per patient")
        seen[text] = row
        if not isinstance(time, numbers.Real) or not math.isfinite(time) or time < 0:
            raise PgoError(f"{at}: time {time!r}; valid: a finite number >= 0")
        if event not in (0, 1):
            raise PgoError(f"{at}: event {event!r}; valid: 0 (censored) or 1 (death observed)")
    values = frame[num].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i[0]) for i in bad.nonzero())
        raise PgoError(f"{where}, row {row} (pid {frame['pid'].iloc[row]}), column {num[col]!r}: "
                       f"{frame[num[col]].iloc[row]}; valid: a finite number")  # fmt: skip
    return num


def write_cohort(dataset: str, directory: str | Path, frame=None) -> Path:
    """Write survival.csv, rna.csv and cohort.yaml of `dataset` (or of `frame`, a SurvSet-style
    frame, for tests) into `directory`; returns the spec's path."""
    frame = load_frame(dataset) if frame is None else frame
    num = _check(frame, dataset)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    patients = [f"{dataset}-{p}" for p in frame["pid"]]
    survival = frame[["time", "event"]].copy()
    survival.insert(0, "patient", patients)
    survival["event"] = survival["event"].astype(int)
    survival.to_csv(directory / "survival.csv", index=False)
    rna = frame[num].copy()
    rna.columns = [f"{c[len('num_') :]}{RNA_SUFFIX}" for c in num]
    rna.insert(0, "patient", patients)
    rna.to_csv(directory / "rna.csv", index=False, float_format="%.9g")
    spec = {
        "cohort": f"survset_{dataset.lower()}",
        "survival": {"path": "survival.csv", "patient": "patient", "time": "time",
                     "event": "event"},
        "omics": [{"path": "rna.csv", "groups": {"rna": {"suffix": RNA_SUFFIX}}}],
        "splits": dict(SPLITS),
        "missing": "drop",
    }  # fmt: skip
    path = directory / "cohort.yaml"
    path.write_text(
        f"# SurvSet {dataset} (SurvLoader().load_dataset({dataset!r})), written by pgo-shards "
        "survset\n" + yaml.safe_dump(spec, sort_keys=False),
        encoding="utf-8",
    )
    return path


def cmd_survset(args: argparse.Namespace) -> int:
    from hpc_pgo.data.build import build_cohort
    from hpc_pgo.data.staging import check_output_dir

    out = Path(args.out or f"shards/survset_{args.dataset.lower()}").expanduser().resolve()
    check_output_dir(out, args.force)  # fail before converting
    frame = load_frame(args.dataset)
    keep = args.cohort_dir is not None
    files = (Path(args.cohort_dir).expanduser().resolve() if keep
             else out.with_name(f".{out.name}.survset-cohort"))  # fmt: skip
    if not keep and files.exists():
        shutil.rmtree(files)
    try:
        spec = write_cohort(args.dataset, files, frame)
        manifest = build_cohort(
            spec, out, workers=args.workers, progress=not args.no_progress, force=args.force
        )
    finally:
        if not keep:
            shutil.rmtree(files, ignore_errors=True)
    fac = [c for c in frame.columns if str(c).startswith("fac_")]
    args.print_built(out, manifest)
    print(f"SurvSet {args.dataset}: rna = {len(manifest['groups']['rna'])} num_ columns; "
          f"{len(fac)} categorical (fac_) column(s) left out")  # fmt: skip
    return 0


def add_survset_parser(
    sub: argparse._SubParsersAction,
    add_run_options: Callable[[argparse.ArgumentParser], None],
    print_built: Callable[[Path, dict], None],
) -> None:
    """The `survset` subcommand; pgo-shards passes its shared options and its 'built' line (so
    this module does not import the CLI that imports it)."""
    p = sub.add_parser(
        "survset",
        help="build a SurvSet expression cohort (pip install survset) into shards",
        description="Write a SurvSet data set (SurvLoader().load_dataset) as survival.csv + "
        "rna.csv (every num_ column; fac_ columns left out) + cohort.yaml (15 seeded random "
        "80/20 splits) and build it (hpc_pgo/data/survset.py).",
    )
    p.add_argument("--dataset", required=True, help="SurvSet name, e.g. DLBCL or DBCD")
    p.add_argument("--out", help="output directory (default shards/survset_<dataset lowercased>)")
    p.add_argument("--cohort-dir", help="keep the written tables and cohort.yaml here")
    add_run_options(p)
    p.set_defaults(func=cmd_survset, print_built=print_built)
