#!/usr/bin/env python
"""Draw attention-MIL heatmaps of a run over its slides' thumbnails.

Thin entry over hpc_pgo.survival.heatmaps.draw_run.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
For each fold of RUN_DIR with a fold_<k>/attention.csv (written by attention-MIL training,
model.image.encoder=abmil; columns patient, unit, attention), draw each test patient's slides:
the slide's thumbnail (1024 px long side) with every tile of the fold's attention painted over
its footprint (inferno, alpha 0.5, attention min-max normalised per slide; tiles without
attention left as they are) and a colour bar at the right. Writes
OUT/fold_<k>/<patient>/<slide stem>.png and OUT/fold_<k>/heatmaps.json (per slide: patient,
slide, png, n_tiles, footprint and the --top tiles with level-0 x0, y0 and weight). A patient
tested in several folds is drawn once per fold. The cohort's magnification and tile_size come
from the run's shard set (config.yaml data.shards -> manifest.json); slide cohorts only.

exit status: 0 drawn; 3 drawn, but some fold directory had no attention.csv (listed on stderr,
one line each); 2 bad input, nothing written: no attention.csv in the whole run, a fold of
--folds without one, a unit that is not a slide tile (file and line named), a slide not in
--slides, a cohort that is not a slide cohort.
"""

INCOMPLETE = 3  # drawn, but some fold had no attention.csv


def folds_arg(text: str) -> list[int] | None:
    """'0,3' or '0-2,5' -> [0, 3] / [0, 1, 2, 5] (hpc_pgo.config.folds, as submit.py's folds=);
    'all' -> None, every fold with an attention.csv."""
    from hpc_pgo.config.folds import fold_selection
    from hpc_pgo.errors import PgoError

    if text.strip().lower() == "all":
        return None
    try:
        return fold_selection(text)
    except PgoError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line: a run directory and where its slides are."""
    parser = argparse.ArgumentParser(
        prog="heatmaps.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of launch/submit.py")
    parser.add_argument(
        "--slides",
        metavar="DIR",
        help="folder of the cohort's slide files (default: the images.dir the shards were built from)",
    )
    parser.add_argument(
        "--folds",
        type=folds_arg,
        metavar="LIST",
        help="folds to draw, e.g. 0,3 or 0-4; each must have attention.csv (default: every fold "
        "that has one)",
    )
    parser.add_argument(
        "--patients", nargs="+", metavar="ID", help="only these patients (default: all)"
    )
    parser.add_argument(
        "--top", type=int, default=5, metavar="N", help="tiles listed per slide in heatmaps.json"
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/heatmaps)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Draw; 0 done, 3 some fold had no attention.csv, 2 bad input."""
    args = build_parser().parse_args(argv)
    from hpc_pgo.errors import PgoError
    from hpc_pgo.survival.heatmaps import draw_run

    try:
        indices, skipped = draw_run(
            args.run_dir,
            args.slides,
            folds=args.folds,
            patients=args.patients,
            top=args.top,
            out=args.out,
        )
    except PgoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in indices:
        print(path)
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    return INCOMPLETE if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
