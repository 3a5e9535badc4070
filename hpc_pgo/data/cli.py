"""`pgo-shards` (also `python -m hpc_pgo.data`): build, verify, info and demo shard sets.

    pgo-shards build --spec cohort.yaml [flags overriding the spec] [--out DIR]
    pgo-shards build --survival T.csv.gz --patient-col case_id --time-col survival_months \\
        --censorship-col censorship --omics same --group cnv:suffix=_cnv \\
        --group mut:suffix=_mut --group rna:suffix=_rnaseq --splits random:15 --out DIR
    pgo-shards verify DIR        # every shard, and the manifest itself; exit 1 on a mismatch
    pgo-shards seal DIR          # digest an old manifest (written before digests) once verified
    pgo-shards info DIR          # patients, units, events, features per group, splits
    pgo-shards demo --out DIR    # simulate the demo cohort (hpc_pgo.data.demo) and build it
    pgo-shards embed-rna DIR --scgpt MODEL_DIR [--mlp-a mlp_a.pt]   # (hpc_pgo.data.embed_rna)

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
    spec = load_spec(args.spec) if args.spec else {"survival": {}, "omics": []}
    _set(spec, "cohort", args.cohort)
    _set(spec, "missing", args.missing)
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
    return resolve_spec(spec, Path.cwd())


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
    if images.get("kind", "rois") == "slides":
        slides = dict(images.get("slides") or {})
        _set(slides, "tile_size", args.tile_size)
        _set(slides, "magnification", args.magnification)
        _set(slides, "max_tiles", args.max_tiles)
        _set(slides, "tissue_threshold", args.tissue_threshold)
        images["slides"], images["tile"] = slides, None
    elif args.tile_size is not None or args.tile_stride is not None:
        tile = dict(images.get("tile") or {})
        _set(tile, "size", args.tile_size)
        _set(tile, "stride", args.tile_stride)
        images["tile"] = tile
    return images


def _splits_from_args(args: argparse.Namespace, splits: dict | None) -> dict:
    splits = parse_splits(args.splits) if args.splits else dict(splits or {})
    _set(splits, "seed", args.split_seed)
    _set(splits, "test_fraction", args.test_fraction)
    file_flags = (args.split_patient_col, args.split_columns, args.split_train, args.split_test)
    if splits.get("kind") == "file":
        f = dict(splits.get("file") or {})
        if args.splits:
            f["path"] = _absolute(f["path"])
        for key, value in zip(("patient", "columns", "train", "test"), file_flags, strict=True):
            _set(f, key, value)
        splits["file"] = f
    elif any(v is not None for v in file_flags):
        raise PgoError(
            "--split-patient-col/--split-columns/--split-train/--split-test need --splits file:PATH"
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
    """verify, or cells.verify_cells for cell shards (the manifest's kind)."""
    from hpc_pgo.data import cells
    from hpc_pgo.data.shards import read_manifest, verify

    kind = read_manifest(directory, check_digest=False).get("kind")
    return cells.verify_cells if kind == cells.KIND else verify


def cmd_verify(args: argparse.Namespace) -> int:
    report = _verifier(args.dir)(args.dir, decode=not args.no_decode)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}")
    print(report.summary())
    return 0 if report.ok else EXIT_MISMATCH


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
    print(f"sealed {path}: {report.shards} shards, {report.samples} samples verified")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hpc_pgo.data import cells
    from hpc_pgo.data.shards import info, read_manifest

    kind = read_manifest(args.dir, check_digest=False).get("kind")
    summary = cells.info_cells if kind == cells.KIND else info
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
]


DEMO_HELP = {
    "genomic_saturation": "bound the omics part of the log hazard: genomic_strength * S tanh(g / S) "
    "instead of genomic_strength * g (default: none, linear)",
    "image_contrast": "multiply the nuclei density and radius slopes on the image factor u "
    "(default 1; 0 = images show nothing of u)",
}


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate the demo cohort's files, then build them into --out.

    The files go to --cohort-dir when given (kept), else to `.<out>.demo-cohort` beside the
    output (removed afterwards; a fixed name, so that the manifest's spec paths, and hence
    the manifest, are the same on every run).
    """
    from hpc_pgo.data.build import build_cohort, check_output_dir
    from hpc_pgo.data.demo import write_demo_cohort

    out = Path(args.out).expanduser().resolve()
    check_output_dir(out, args.force)  # fail before simulating
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
    finally:
        if not keep:
            shutil.rmtree(files, ignore_errors=True)
    _print_built(out, manifest)
    return 0


# --------------------------------------------------------------------------- parser


def _build_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build a cohort into shards + manifest.json",
        description="Build a cohort into WebDataset shards and manifest.json. "
        "Flags override the --spec file's keys (format: shards/README.md).",
    )
    p.add_argument("--spec", help="YAML cohort spec; paths in it are relative to its folder")
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
    g.add_argument("--image-kind", choices=("rois", "slides"))
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
            flag, dest=kw, type=kind, help=DEMO_HELP.get(kw, f"write_demo_cohort({kw}=...)")
        )
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)
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
        from hpc_pgo.data.build import os_error_text

        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
