#!/usr/bin/env python
"""What a fold pays for being a Slurm array task: 15 trivial folds as one array vs one process.

Baseline (same run): the 15 fold calls made one after the other in this process
(``trivial_fold(cfg, k, run_dir)``, which does no work). Measured: ``submit()`` of the same 15
folds as ONE job array on the dev cluster (cluster=slurm_cpu: sbatch, scheduling, python start,
submitit's pickles, FoldTask's config load and rendezvous set-up) until every fold's job is
done, as submitit's watcher (sacct) sees it. Prints both wall times and the overhead per task:
(array - baseline) / 15, and per task and array slot: (array - baseline) / ceil(15 / slots).

    make cluster && .venv/bin/python benchmarks/array_overhead.py [--parallel N]

Needs the dev cluster (slurm/dev-cluster.sh) or any Slurm with a default partition.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_FOLDS = 15


def trivial_fold(cfg, fold: int, run_dir: Path) -> dict:
    """The benchmark's fold: no work, so that only the launch machinery is timed."""
    return {"fold": fold}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="array_parallelism (default 2: the dev cluster's CPUs)",
    )
    args = parser.parse_args()
    # the jobs import this file's trivial_fold as benchmarks.array_overhead.trivial_fold
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    sys.path.insert(0, str(REPO))

    from hpc_pgo.config import load_config
    from hpc_pgo.data.cli import main as pgo_shards
    from hpc_pgo.launch.submission import submit, wait

    with tempfile.TemporaryDirectory(prefix="pgo-overhead-") as tmp:
        shards = Path(tmp) / "shards"
        assert (
            pgo_shards(
                [
                    "demo",
                    "--out",
                    str(shards),
                    "--patients",
                    "30",
                    "--no-progress",
                    "--workers",
                    "1",
                ]
            )
            == 0
        )
        common = [
            f"data.shards={shards}", "launch.fold_fn=benchmarks.array_overhead.trivial_fold",
            "folds=0-14", "cluster=slurm_cpu", f"cluster.array_parallelism={args.parallel}",
        ]  # fmt: skip

        started = time.perf_counter()
        sub = submit([*common, f"run_dir={tmp}/array"])
        wait(sub, progress=False, poll_s=0.2, timeout_s=600)
        array_s = time.perf_counter() - started
        if sub.array.report_job is not None:
            sub.array.report_job.cancel(check=False)  # its time is not the folds'

        cfg = load_config(sub.run_dir)
        started = time.perf_counter()
        for k in range(N_FOLDS):
            trivial_fold(cfg, k, Path(tmp) / "inline")
        inline_s = time.perf_counter() - started

    waves = math.ceil(N_FOLDS / args.parallel)
    print(f"15 trivial folds, one process (baseline): {inline_s:9.4f} s")
    print(f"15 trivial folds, one Slurm array ({args.parallel} at a time): {array_s:9.2f} s")
    print(
        f"overhead per task: {(array_s - inline_s) / N_FOLDS:.2f} s; per task and slot "
        f"({waves} waves): {(array_s - inline_s) / waves:.2f} s; ratio array/baseline: "
        f"{array_s / max(inline_s, 1e-9):.0f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
