"""`pgo-shards` (also `python -m hpc_pgo.data`): build, verify, info and demo shard sets.

    pgo-shards build --spec cohort.yaml [--data-dir DIR] [flags overriding the spec] [--out DIR]
    pgo-shards build --spec configs/cohorts/tcga_kirc_porpoise.yaml --data-dir ~/porpoise
    pgo-shards build --survival T.csv.gz --patient-col case_id --time-col survival_months \\
        --censorship-col censorship --omics same --group cnv:suffix=_cnv \\
        --group mut:suffix=_mut --group rna:suffix=_rnaseq --splits random:15 --out DIR
    pgo-shards verify DIR        # every shard, and the manifest itself; exit 1 on a mismatch
    pgo-shards seal DIR          # digest an old manifest (written before digests) once verified
    pgo-shards info DIR          # patients, units, events, features per group, splits
    pgo-shards demo --out DIR    # simulate the demo cohort (hpc_pgo.data.demo) and build it
    pgo-shards demo --out DIR --rna cells [--cell-types 10]   # bulk RNA of cell mixtures + atlas
    pgo-shards fit-scgpt --h5ad cells.h5ad --out MODEL_DIR [--steps 300]   # (hpc_pgo.models.scgpt_fit)
    pgo-shards embed-rna DIR --scgpt MODEL_DIR [--mlp-a mlp_a.pt]   # (hpc_pgo.data.embed_rna)
    pgo-shards embed-tiles DIR --arch resnet18 --weights resnet18.pth   # (hpc_pgo.data.embed_tiles)
    pgo-shards survset --dataset DLBCL [--out DIR]   # a SurvSet cohort (hpc_pgo.data.survset)

Bad input prints `error: <one line>` to stderr and exits 2; so does a file-system error
(read-only, no permission, disk full: the path and the system's reason; the traceback only with
--verbose).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpc_pgo.data.layouts import DEFAULT_KIND, LAYOUTS, get_layout
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 1


# --------------------------------------------------------------------------- flag parsing


def parse_group(text: str) -> tuple[str, dict]:
    """`NAME:KIND=VALUE` -> (name, selector); KIND is suffix, prefix, regex or columns
    (columns=A,B,C, comma-separated)."""
    from hpc_pgo.data.cohort import SELECTOR_KINDS

    name, sep, rest = text.partition(":")
    kind, eq, value = rest.partition("=")
    if not sep or not eq or not name or not value or kind not in SELECTOR_KINDS:
        raise PgoError(
            f"--group {text!r}: expected NAME:KIND=VALUE with KIND one of "
            f"{', '.join(SELECTOR_KINDS)} (e.g. cnv:suffix=_cnv)"
        )
    if kind == "columns":
        return name, {"columns": [c.strip() for c in value.split(",") if c.strip()]}
    return name, {kind: value}


def parse_splits(text: str) -> dict:
    """`random[:N]`, `kfold[:K]` or `file:PATH` -> a partial splits section."""
    kind, _, arg = text.partition(":")
    if kind == "file":
        if not arg:
            raise PgoError(f"--splits {text!r}: file needs a path, e.g. file:pnas_splits.csv")
        return {"kind": "file", "file": {"path": arg}}
    if kind not in ("random", "kfold"):
        raise PgoError(f"--splits {text!r}: expected random[:N], kfold[:K] or file:PATH")
    if not arg:
        return {"kind": kind}
    try:
        return {"kind": kind, "n": int(arg)}
    except ValueError:
        raise PgoError(f"--splits {text!r}: {arg!r} is not an integer") from None


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _set(section: dict, key: str, value: Any) -> None:
    if value is not None:
        section[key] = value


def spec_from_args(args: argparse.Namespace) -> dict:
    """The resolved cohort spec: --spec FILE (if any) with the flags laid over it.

    Paths in flags are relative to the working directory; paths in the spec to its file.
    """
    from hpc_pgo.data.cohort import SAME_TABLE, load_spec, resolve_spec

    if args.spec is None and args.survival is None:
        raise PgoError(
            "build: give --spec FILE or --survival TABLE (with --patient-col, "
            "--time-col and --event-col or --censorship-col)"
        )
    if args.spec is None:
        needed = {
            "--patient-col": args.patient_col,
            "--time-col": args.time_col,
            "--event-col or --censorship-col": args.event_col or args.censorship_col,
        }
        for flag, value in needed.items():
            if value is None:
                raise PgoError(f"build: {flag} is needed with --survival (or give --spec FILE)")
    if args.data_dir is not None and args.spec is None:
        raise PgoError(
            "build: --data-dir needs --spec FILE (it is where the spec's relative paths start; "
            "flag paths are relative to the working directory)"
        )
    spec = load_spec(args.spec, args.data_dir) if args.spec else {"survival": {}, "omics": []}
    _set(spec, "cohort", args.cohort)
    _set(spec, "missing", args.missing)
    if args.survival is not None and args.spec is not None:
        # the spec's tables that were its survival table (`path: same`) follow --survival
        before = spec["survival"]["path"]
        spec["omics"] = [
            {**t, "path": SAME_TABLE} if t["path"] == before else t for t in spec["omics"]
        ]
    surv = dict(spec["survival"])
    _set(surv, "path", _absolute(args.survival))
    _set(surv, "patient", args.patient_col)
    _set(surv, "time", args.time_col)
    if args.event_col is not None or args.censorship_col is not None:
        surv["event"], surv["censorship"] = args.event_col, args.censorship_col
    spec["survival"] = surv
    spec["omics"] = _omics_from_args(args, list(spec.get("omics") or []), SAME_TABLE)
    spec["images"] = _images_from_args(args, spec.get("images"))
    spec["splits"] = _splits_from_args(args, spec.get("splits"))
    resolved = resolve_spec(spec, Path.cwd())
    if args.spec is not None:
        _check_spec_inputs(resolved, args)
    return resolved


# spec input -> (what it is, the flag that gives it instead)
_INPUT_FLAGS = {
    "survival": ("survival table", "--survival PATH"),
    "omics": ("omics table", "--omics PATH"),
    "images": ("image folder", "--images DIR"),
    "splits": ("split table", "--splits file:PATH"),
}


def _check_spec_inputs(spec: dict, args: argparse.Namespace) -> None:
    """Every file and folder a spec names exists; else one error line saying where the spec's
    relative paths started and which flag points at the file (a shipped spec, e.g.
    configs/cohorts/*.yaml, names the files of a public release, not where they were saved)."""
    from_flag = {
        "survival": args.survival is not None,
        "omics": args.omics is not None and args.omics != "same",
        "images": args.images is not None,
        "splits": (args.splits or "").startswith("file:"),
    }
    inputs = [("survival", spec["survival"]["path"])]
    inputs += [("omics", t["path"]) for t in spec["omics"]]
    if spec["images"] is not None:
        inputs.append(("images", spec["images"]["dir"]))
    if spec["splits"]["kind"] == "file":
        inputs.append(("splits", spec["splits"]["file"]["path"]))
    for key, path in inputs:
        if Path(path).exists():
            continue
        what, flag = _INPUT_FLAGS[key]
        if from_flag[key]:
            raise PgoError(f"{what} {path}: not found (given by {flag.split()[0]})")
        start = (
            f"--data-dir {args.data_dir}"
            if args.data_dir is not None
            else f"its data_dir, else its folder {Path(args.spec).parent}"
        )
        raise PgoError(
            f"{what} {path}: not found (the spec {args.spec} names it; its relative paths start "
            f"at {start}); valid: --data-dir DIR, the folder holding the downloaded files, or "
            f"{flag}"
        )


def _omics_from_args(args: argparse.Namespace, tables: list[dict], same: str) -> list[dict]:
    if args.omics is None and args.omics_patient_col is None and not args.group:
        return tables
    if len(tables) > 1:
        raise PgoError("--omics/--group: the spec has several omics tables; edit the spec")
    table = dict(tables[0]) if tables else {}
    if args.omics is not None:
        table["path"] = same if args.omics == same else _absolute(args.omics)
    _set(table, "patient", args.omics_patient_col)
    if args.group:
        groups = {}
        for text in args.group:
            name, selector = parse_group(text)
            if name in groups:
                raise PgoError(f"--group {text!r}: group {name!r} given twice")
            groups[name] = selector
        table["groups"] = groups
    if "path" not in table:
        raise PgoError("--group: give the omics table with --omics PATH (or --omics same)")
    return [table]


def _images_from_args(args: argparse.Namespace, images: dict | None) -> dict | None:
    if args.no_images:
        return None
    flags = (
        args.images,
        args.image_kind,
        args.patient_regex,
        args.tile_size,
        args.tile_stride,
        args.magnification,
        args.max_tiles,
        args.tissue_threshold,
    )
    if all(f is None for f in flags):
        return images
    images = dict(images or {})
    _set(images, "dir", _absolute(args.images))
    _set(images, "kind", args.image_kind)
    _set(images, "patient_regex", args.patient_regex)
    # the tiling flags go to the kind's own section; an unknown kind is refused by resolve_spec
    layout = get_layout(images.get("kind", DEFAULT_KIND))
    if layout is not None:
        layout.apply_flags(images, vars(args))
    return images


def _splits_from_args(args: argparse.Namespace, splits: dict | None) -> dict:
    """The splits section: --splits of another kind replaces the spec's; of the spec's own kind
    it keeps the rest of it (`--splits file:PATH` on a spec with a split file changes only the
    path: its patient column, column template and numbering stay)."""
    spec_splits = {k: v for k, v in (splits or {}).items() if v is not None}
    splits = dict(spec_splits)
    if args.splits:
        given = parse_splits(args.splits)
        if given["kind"] != spec_splits.get("kind", "random"):
            splits = {}
        file = {**(splits.get("file") or {}), **given.pop("file", {})}
        splits.update(given)
        if given["kind"] == "file":
            splits["file"] = {**file, "path": _absolute(file["path"])}
    _set(splits, "seed", args.split_seed)
    _set(splits, "test_fraction", args.test_fraction)
    file_flags = {
        "patient": args.split_patient_col,
        "columns": args.split_columns,
        "first": args.split_first,
        "train": args.split_train,
        "test": args.split_test,
    }
    if splits.get("kind") == "file":
        f = dict(splits.get("file") or {})
        for key, value in file_flags.items():
            _set(f, key, value)
        splits["file"] = f
    elif any(v is not None for v in file_flags.values()):
        raise PgoError(
            "--split-patient-col/--split-columns/--split-first/--split-train/--split-test need "
            "--splits file:PATH"
        )
    return splits


# --------------------------------------------------------------------------- commands


def cmd_build(args: argparse.Namespace) -> int:
    from hpc_pgo.data.build import build_cohort

    spec = spec_from_args(args)
    if args.out is None and spec["cohort"] is None:
        raise PgoError("build: give --out DIR or --cohort NAME (then the output is shards/NAME)")
    out = Path(args.out) if args.out else Path("shards") / spec["cohort"]
    manifest = build_cohort(
        spec,
        out,
        workers=args.workers,
        progress=not args.no_progress,
        force=args.force,
        shard_size_mb=args.shard_size_mb,
        shard_max_count=args.shard_max_count,
    )
    _print_built(out, manifest)
    return 0


def _print_built(out: Path, manifest: dict) -> None:
    c = manifest["counts"]
    splits = manifest["splits"]
    columns = splits.get("columns")
    mapping = (
        f" (folds 0..{len(columns) - 1} = columns {columns[0]!r}..{columns[-1]!r})"
        if columns
        else ""
    )
    print(
        f"built {out}: {c['patients']} patients, {c['units']} units, {c['events']} events, "
        f"{len(manifest['shards'])} shards, {len(splits['folds'])} splits{mapping}, "
        f"{len(manifest['dropped'])} dropped"
    )


def _verifier(directory: str) -> Callable:
    """verify, or cell_shards.verify_cells for cell shards (the manifest's kind)."""
    from hpc_pgo.data import cell_shards
    from hpc_pgo.data.shards import read_manifest, verify

    kind = read_manifest(directory, check_digest=False).get("kind")
    return cell_shards.verify_cells if kind == cell_shards.KIND else verify


def cmd_verify(args: argparse.Namespace) -> int:
    report = _verifier(args.dir)(args.dir, decode=not args.no_decode)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        from hpc_pgo.data.shards import read_manifest

        _record_verified(args.dir, read_manifest(args.dir), report)
    print(report.summary())
    return 0 if report.ok else EXIT_MISMATCH


def _record_verified(directory: str, manifest: dict, report) -> None:
    """verified.json for the shards the report hashed (verify, seal): loaders then trust them
    without hashing them again. A read-only copy is still verified, only not recorded."""
    from hpc_pgo.data.shards import VERIFIED, write_verified

    if not report.verified:
        return
    try:
        write_verified(directory, manifest, report.verified)
    except OSError as exc:
        print(
            f"note: {VERIFIED} not written ({exc.strerror or exc}); loaders will hash the "
            "shards they read"
        )


def cmd_seal(args: argparse.Namespace) -> int:
    """Add the digest to a manifest written without one (before hpc_pgo sealed manifests),
    after verifying the shard set against it; a sealed manifest is left as it is, an edited
    one (digest differs) is refused."""
    from hpc_pgo.data.shards import (
        DIGEST_KEY,
        MANIFEST,
        digest_problem,
        manifest_digest,
        read_manifest,
        write_manifest,
    )

    manifest = read_manifest(args.dir, check_digest=False)
    path = Path(args.dir) / MANIFEST
    if manifest.get(DIGEST_KEY) == manifest_digest(manifest):
        print(f"{path}: already sealed; nothing to do")
        return 0
    if manifest.get(DIGEST_KEY) is not None:
        raise PgoError(
            f"{path}: its content differs from its {DIGEST_KEY} (edited after it was written); "
            "seal only digests a manifest that has none; rebuild the shard set "
            "(pgo-shards build --force)"
        )
    report = _verifier(args.dir)(args.dir, decode=not args.no_decode)
    unsealed = f"{MANIFEST}: {digest_problem(manifest, args.dir)}"
    problems = [p for p in report.problems if p != unsealed]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"seal {args.dir}: refused, verify finds {len(problems)} problems; rebuild it")
        return EXIT_MISMATCH
    write_manifest(args.dir, manifest)
    _record_verified(args.dir, manifest, report)
    print(f"sealed {path}: {report.shards} shards, {report.samples} samples verified")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hpc_pgo.data import cell_shards
    from hpc_pgo.data.shards import info, read_manifest

    kind = read_manifest(args.dir, check_digest=False).get("kind")
    summary = cell_shards.info_cells if kind == cell_shards.KIND else info
    print(summary(args.dir))
    return 0


# CLI flag -> write_demo_cohort keyword (the simulator documents each in hpc_pgo/data/demo.py)
DEMO_OPTIONS: list[tuple[str, str, Callable]] = [
    ("--patients", "n_patients", int),
    ("--rois", "rois_per_patient", int),
    ("--image-size", "image_size", int),
    ("--n-cnv", "n_cnv", int),
    ("--n-mut", "n_mut", int),
    ("--n-rna", "n_rna", int),
    ("--genomic-strength", "genomic_strength", float),
    ("--image-strength", "image_strength", float),
    ("--genomic-saturation", "genomic_saturation", float),
    ("--image-contrast", "image_contrast", float),
    ("--weibull-shape", "weibull_shape", float),
    ("--censoring", "censoring", float),
    ("--seed", "seed", int),
    ("--rna", "rna_model", str),
    ("--cell-types", "n_cell_types", int),
    ("--cell-strength", "cell_strength", float),
    ("--atlas-cells-per-type", "atlas_cells_per_type", int),
]
# hpc_pgo.data.demo.RNA_MODELS, named here so that parsing does not import the simulator
RNA_MODEL_NAMES = ("programs", "cells")


DEMO_HELP = {
    "genomic_saturation": "bound the omics part of the log hazard: genomic_strength * S tanh(g / S) "
    "instead of genomic_strength * g (default: none, linear)",
    "image_contrast": "multiply the nuclei density and radius slopes on the image factor u "
    "(default 1; 0 = images show nothing of u)",
    "rna_model": "programs (default): log-normal RNA from the latent programs; cells: bulk RNA "
    "counts of a mixture of cell types, part of the risk from the fractions, and a labelled "
    "single-cell atlas (cells.h5ad + cell_types.yaml) in --cohort-dir, else in <out>-atlas/",
    "n_cell_types": "--rna cells: cell types (8..17, default 10)",
    "cell_strength": "--rna cells: multiply the fractions' part of the log hazard (default 1)",
    "atlas_cells_per_type": "--rna cells: atlas cells of each type (default 200)",
}


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate the demo cohort's files, then build them into --out.

    The files go to --cohort-dir when given (kept), else to `.<out>.demo-cohort` beside the
    output (removed afterwards; a fixed name, so that the manifest's spec paths, and hence
    the manifest, are the same on every run).
    """
    from hpc_pgo.data.build import build_cohort
    from hpc_pgo.data.demo import ATLAS_FILE, LABEL_MAP_FILE, write_demo_cohort
    from hpc_pgo.data.staging import check_output_dir

    out = Path(args.out).expanduser().resolve()
    check_output_dir(out, args.force)  # fail before simulating
    atlas_dir = None
    if args.rna_model == "cells":
        atlas_dir = Path(args.cohort_dir).expanduser().resolve() if args.cohort_dir else None
        if atlas_dir is None:
            atlas_dir = out.with_name(f"{out.name}-atlas")
            if atlas_dir.exists() and not atlas_dir.is_dir():
                raise PgoError(f"atlas folder {atlas_dir}: exists and is not a folder")
    options = {kw: getattr(args, kw) for _, kw, _ in DEMO_OPTIONS if getattr(args, kw) is not None}
    keep = args.cohort_dir is not None
    files = (
        Path(args.cohort_dir).expanduser().resolve()
        if keep
        else out.with_name(f".{out.name}.demo-cohort")
    )
    if not keep and files.exists():
        shutil.rmtree(files)
    try:
        spec_path = write_demo_cohort(files, **options)
        manifest = build_cohort(
            spec_path, out, workers=args.workers, progress=not args.no_progress, force=args.force
        )
        if atlas_dir is not None and not keep:
            atlas_dir.mkdir(parents=True, exist_ok=True)
            for name in (ATLAS_FILE, LABEL_MAP_FILE):
                shutil.move(files / name, atlas_dir / name)  # a rename on one file system
    finally:
        if not keep:
            shutil.rmtree(files, ignore_errors=True)
    _print_built(out, manifest)
    if atlas_dir is not None:
        print(
            f"single-cell atlas: {atlas_dir / ATLAS_FILE} (obs cell_type, counts; cells of no "
            f"patient), label map {atlas_dir / LABEL_MAP_FILE}; next: pgo-shards fit-scgpt "
            f"--h5ad {atlas_dir / ATLAS_FILE} --out MODEL_DIR"
        )
    return 0


def cmd_fit_scgpt(args: argparse.Namespace) -> int:
    """Fit a small scGPT on an atlas (hpc_pgo.models.scgpt_fit) and print what was written."""
    import numpy as np
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise PgoError(f"--threads {args.threads}: valid: an integer >= 1")
        torch.set_num_threads(args.threads)
    from hpc_pgo.models.scgpt_fit import fit_scgpt

    result = fit_scgpt(
        args.h5ad,
        args.out,
        steps=args.steps,
        seed=args.seed,
        d_model=args.d_model,
        nlayers=args.layers,
        nheads=args.heads,
        d_hid=args.d_hid,
        lr=args.lr,
        batch_size=args.batch_size,
        mask_ratio=args.mask_ratio,
        max_length=args.max_length,
        layer=args.layer,
        gene_col=args.gene_col,
        force=args.force,
        progress=not args.no_progress,
    )
    k = min(20, len(result.losses))
    trend = (
        f", loss {np.mean(result.losses[:k]):.1f} -> {np.mean(result.losses[-k:]):.1f} "
        f"(mean of the first / last {k} steps)"
        if k
        else " (random initialisation)"
    )
    print(
        f"fitted scGPT {result.model_dir}: d_model {args.d_model}, {args.layers} layers, "
        f"{result.n_genes} genes, {result.n_cells} cells; {args.steps} steps in "
        f"{result.seconds:.0f} s{trend}"
    )
    return 0


def _fit_scgpt_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-scgpt",
        help="fit a small scGPT on a single-cell atlas (.h5ad), official checkpoint layout",
        description="Fit a small scGPT (vocabulary: the atlas's genes) with scGPT's own "
        "objectives (masked gene-expression prediction, GEP + GEPC) and write args.json, "
        "vocab.json, best_model.pt (+ fit.json) to --out atomically "
        "(hpc_pgo/models/scgpt_fit.py).",
    )
    p.add_argument("--h5ad", required=True, help="the atlas: non-negative counts in X or --layer")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="checkpoint folder to write")
    p.add_argument("--steps", type=int, default=300, help="Adam steps (default 300; 0: random)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, batches, masks (0)")
    p.add_argument("--d-model", type=int, default=64, help="embedding size (default 64)")
    p.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--d-hid", type=int, help="feed-forward size (default --d-model)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=32, help="cells per step (default 32)")
    p.add_argument("--mask-ratio", type=float, default=0.4, help="masked bins (default 0.4)")
    p.add_argument("--max-length", type=int, default=1200, help="tokens per cell incl. <cls>")
    p.add_argument("--layer", help="read layers/LAYER instead of X (e.g. counts)")
    p.add_argument("--gene-col", help="var column with gene symbols (default: var_names)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default torch's; 1 is fastest on a shared, busy machine)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit_scgpt)


# --------------------------------------------------------------------------- parser


def _build_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build a cohort into shards + manifest.json",
        description="Build a cohort into WebDataset shards and manifest.json. "
        "Flags override the --spec file's keys (format: shards/README.md).",
    )
    p.add_argument(
        "--spec",
        help="YAML cohort spec (shipped: configs/cohorts/*.yaml); its relative paths start at "
        "--data-dir, else its data_dir key, else its folder",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the folder of the cohort's files (e.g. a downloaded release): where the spec's "
        "relative paths start",
    )
    p.add_argument("--out", help="output directory (default shards/<cohort>)")
    p.add_argument("--cohort", help="cohort name (default: the output directory's name)")
    g = p.add_argument_group("survival table")
    g.add_argument("--survival", metavar="TABLE", help="CSV/TSV, optionally .gz")
    g.add_argument("--patient-col", help="patient-id column")
    g.add_argument("--time-col", help="survival time column (months)")
    e = g.add_mutually_exclusive_group()
    e.add_argument("--event-col", help="event column: 1 = death observed, 0 = censored")
    e.add_argument("--censorship-col", help="censorship column: 1 = censored (flipped)")
    g = p.add_argument_group("omics")
    g.add_argument(
        "--omics",
        metavar="TABLE|same",
        help="omics table ('same' = the survival table); several tables need a spec",
    )
    g.add_argument("--omics-patient-col", help="its patient column (default --patient-col)")
    g.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME:KIND=VALUE",
        help="feature group, KIND suffix|prefix|regex|columns (columns=A,B,C); "
        "repeat for each group",
    )
    g = p.add_argument_group("images (omit for an omics-only cohort)")
    g.add_argument("--images", metavar="DIR", help="folder of ROI images or slides")
    g.add_argument("--image-kind", choices=tuple(LAYOUTS))
    g.add_argument(
        "--patient-regex",
        help="regex with (?P<patient>...) over file names (default '^(?P<patient>.+?)_')",
    )
    g.add_argument(
        "--tile-size", type=int, help="cut ROIs into tiles of this many px (slides: tile size)"
    )
    g.add_argument("--tile-stride", type=int, help="ROI tile stride in px (default the size)")
    g.add_argument("--magnification", type=float, help="slides: objective power (default 20)")
    g.add_argument("--max-tiles", type=int, help="slides: tiles per slide (default 64)")
    g.add_argument("--tissue-threshold", type=float, help="slides: min tissue fraction (0.5)")
    g.add_argument("--no-images", action="store_true", help="ignore the spec's images")
    g = p.add_argument_group("splits (always by patient)")
    g.add_argument(
        "--splits", metavar="KIND", help="random[:N] (default random:15), kfold[:K] or file:PATH"
    )
    g.add_argument("--split-seed", type=int)
    g.add_argument("--test-fraction", type=float, help="random splits (default 0.2)")
    g.add_argument("--split-patient-col", help="split file: patient column (default first)")
    g.add_argument(
        "--split-columns",
        help="split file: column template with {k} (default 'Randomization - {k}')",
    )
    g.add_argument(
        "--split-first",
        type=int,
        choices=(0, 1),
        help="split file: number of its first split column (unset: 0 or 1, recorded)",
    )
    g.add_argument("--split-train", help="split file: train value (default Train)")
    g.add_argument("--split-test", help="split file: test value (default Test)")
    g = p.add_argument_group("output")
    g.add_argument(
        "--missing",
        choices=("drop", "mask"),
        help="patients lacking a modality: drop (default) or keep with a mask",
    )
    _add_run_options(g)
    g.add_argument("--shard-size-mb", type=float, default=256, help="close a shard past this")
    g.add_argument("--shard-max-count", type=int, default=10000, help="samples per shard")
    p.set_defaults(func=cmd_build)


def _add_run_options(g) -> None:
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: CPUs, at most 8; 0 or 1 = in-process)",
    )
    g.add_argument("--force", action="store_true", help="replace an existing shard set")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line, `error: ...`, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pgo-shards", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _build_parser(sub)
    from hpc_pgo.data.cells import add_cells_parser

    add_cells_parser(sub)
    from hpc_pgo.data.embed_rna import add_embed_rna_parser

    add_embed_rna_parser(sub)
    from hpc_pgo.data.embed_tiles import add_embed_tiles_parser

    add_embed_tiles_parser(sub)
    from hpc_pgo.data.survset import add_survset_parser

    add_survset_parser(sub, _add_run_options, _print_built)
    p = sub.add_parser("verify", help="check every shard against the manifest")
    p.add_argument("dir", help="shard set directory")
    p.add_argument("--no-decode", action="store_true", help="check counts and sha256 only")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser(
        "seal",
        help="digest a manifest written without one, after verifying it",
        description="Verify a shard set whose manifest.json has no manifest_sha256 (written "
        "before hpc_pgo digested its manifests) and, when every check passes, add the digest "
        "(atomically). The loader, embed-rna and cells refuse a manifest without one.",
    )
    p.add_argument("dir", help="shard set directory")
    p.add_argument("--no-decode", action="store_true", help="check counts and sha256 only")
    p.set_defaults(func=cmd_seal)
    p = sub.add_parser("info", help="summarise a shard set")
    p.add_argument("dir", help="shard set directory")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser(
        "demo",
        help="simulate the demo cohort and build it",
        description="Simulate the demo cohort (model: hpc_pgo/data/demo.py) and "
        "build it into --out. Unset options take the simulator's defaults.",
    )
    p.add_argument("--out", default="shards/demo", help="output directory (default shards/demo)")
    p.add_argument(
        "--cohort-dir", help="keep the simulated files (tables, ROIs, truth.csv, cohort.yaml) here"
    )
    for flag, kw, kind in DEMO_OPTIONS:
        p.add_argument(
            flag,
            dest=kw,
            type=kind,
            choices=RNA_MODEL_NAMES if kw == "rna_model" else None,
            help=DEMO_HELP.get(kw, f"write_demo_cohort({kw}=...)"),
        )
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)
    _fit_scgpt_parser(sub)
    return parser


def _exit_on_sigterm(signum: int, frame) -> None:
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `pgo-shards`; returns the exit status (0 ok, 1 verify mismatch, 2 bad input or a
    file-system error)."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # SIGTERM (Slurm's time limit, kill) unwinds like an error, so a build's temporary
    # directory is removed instead of left beside the output.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        return args.func(args)
    except PgoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the file system said no (read-only, permission, full): one line
        log.info("%s", exc, exc_info=True)  # the traceback, with --verbose
        from hpc_pgo.data.staging import os_error_text

        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
