#!/usr/bin/env python
"""(Re)write the report of a run directory: summary.json, summary.md, km.png, modulation.png.

Thin entry over hpc_pgo.launch.report: works on finished, partial and failed runs, on sweeps
(the configurations side by side) and on fold_<k>/predictions.csv files from elsewhere.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Aggregate the folds of a run: reads every RUN_DIR/fold_<k>/predictions.csv (columns patient,
unit, hazard, time, event), computes the C-index per fold over patients (patient hazard = mean
over its units) and mean ± t(0.975, n-1)·SEM over folds, and writes RUN_DIR/summary.json,
summary.md, km.png (each unique test patient once, in the risk group of its mean position
against its folds' median hazards; log-rank p over unique patients) and
modulation.png (rho and coefficients over training). Folds still missing and folds that failed
(fold_<k>/error.txt) are listed. A sweep's run directory gets each sub-run's report and
sweep.md, the configurations side by side. Prints the table.

exit status: 0 every fold of the run (of every sweep run) has its predictions; 3 the report was
written but some fold failed or is missing (listed on stderr, one line each); 2 bad input (no
such directory, a file instead of a run directory, unreadable predictions), nothing written.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line: one run directory."""
    parser = argparse.ArgumentParser(
        prog="report.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of launch/submit.py")
    return parser


INCOMPLETE = 3  # the exit status when some fold failed or is missing


def main(argv: list[str] | None = None) -> int:
    """Write the report; 0 complete, 3 some fold failed or missing, 2 bad input."""
    args = build_parser().parse_args(argv)
    from hpc_pgo.errors import PgoError
    from hpc_pgo.launch.report import report_run

    try:
        text, incomplete = report_run(args.run_dir)
    except PgoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    for line in incomplete:
        print(f"incomplete: {line}", file=sys.stderr)
    return INCOMPLETE if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
