"""Train-loader throughput against a decode-only loop over the same tar files.

    python benchmarks/loader.py [--shards DIR] [--rounds 5] [--batch-size 16]

Without --shards it builds the demo cohort at 224 px (`python -m hpc_pgo.data demo --image-size
224 --rois 4`: 150 patients x 4 ROIs) in a temporary directory. It measures units/s of one train
epoch of fold 0 from make_loader (rank 0 of 1; omics groups cnv/mut/rna standardised; the
loader's creation, its worker start and the collation included) with 0, 1 and 2 worker
processes, and the BASELINE: one process that reads the same tar files and decodes the PNGs of
the same units (tarfile + PIL, nothing else). Rounds alternate the four modes so that a change
in machine load hits them alike; the median of the rounds is printed, then the ratios
loader / baseline, and the CPU time per unit of each mode summed over its processes (the
benchmark's own process and the DataLoader workers). Target: >= 0.8 with 2 workers. On a shared
machine the wall-clock ratio depends on what else runs: the load average is printed with it.

The main process runs with torch.set_num_threads(1), as a training rank does under torchrun
(OMP_NUM_THREADS=1); DataLoader workers always run single-threaded.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from webdataset.tariterators import base_plus_ext

from hpc_pgo.data.epochs import PLANS
from hpc_pgo.data.folds import open_fold, split_keys
from hpc_pgo.data.loader import make_loader
from hpc_pgo.data.standardizer import Standardizer
from hpc_pgo.data.tarindex import index_shards

FOLD = 0
GROUPS = ("cnv", "mut", "rna")
IMAGE_SIZE = 224
WORKERS = (0, 1, 2)


def decode_only(shard_dir: Path, shard_names: list[str], keys: set[str]) -> int:
    """BASELINE: stream the tars, decode the PNG of every wanted key to an RGB array; count them."""
    count = 0
    for name in shard_names:
        with tarfile.open(shard_dir / name, mode="r|") as tar:
            for member in tar:
                key, suffix = base_plus_ext(member.name)
                if suffix == "png" and key in keys:
                    data = tar.extractfile(member).read()
                    with Image.open(io.BytesIO(data)) as image:
                        np.asarray(image.convert("RGB"))
                    count += 1
    return count


def loader_epoch(
    shard_dir: Path, standardizer: Standardizer, *, epoch: int, batch_size: int, workers: int
) -> int:
    """One train epoch of fold 0 through make_loader; returns the number of units yielded."""
    loader = make_loader(
        shard_dir,
        FOLD,
        "train",
        batch_size=batch_size,
        groups=GROUPS,
        image_size=IMAGE_SIZE,
        standardizer=standardizer,
        epoch=epoch,
        num_workers=workers,
    )
    return sum(len(batch["key"]) for batch in loader)


def epoch_keys(shard_dir: Path, *, epoch: int, batch_size: int) -> set[str]:
    """The units the loader yields in this epoch (its plan), for the baseline to decode."""
    data = open_fold(shard_dir, FOLD)
    index = index_shards(shard_dir, data.manifest)
    plan = PLANS["train"](
        index,
        split_keys(data, index, "train"),
        rank=0,
        world_size=1,
        batch_size=batch_size,
        epoch=epoch,
        seed=0,
        shuffle_buffer=256,
    )
    return set(plan.keys)


def build_demo(out: Path) -> Path:
    """The demo cohort at 224 px, built by the shard CLI."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hpc_pgo.data",
            "demo",
            "--out",
            str(out),
            "--image-size",
            str(IMAGE_SIZE),
            "--rois",
            "4",
            "--no-progress",
        ],
        check=True,
    )
    return out


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (DataLoader workers)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(
    shard_dir: Path, rounds: int, batch_size: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """units/s (wall clock) and CPU ms per unit (all processes), per mode and round."""
    data = open_fold(shard_dir, FOLD)
    standardizer = Standardizer.fit(shard_dir, data.train, GROUPS)
    names = [entry["name"] for entry in data.manifest["shards"]]
    modes = {
        "decode-only baseline": lambda epoch: decode_only(
            shard_dir, names, epoch_keys(shard_dir, epoch=epoch, batch_size=batch_size)
        )
    }
    for workers in WORKERS:
        modes[f"loader, {workers} workers"] = functools.partial(
            loader_epoch, shard_dir, standardizer, batch_size=batch_size, workers=workers
        )
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    for epoch in range(rounds):
        for mode, run in modes.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            count = run(epoch=epoch)
            rates[mode].append(count / (time.perf_counter() - start))
            cpu[mode].append((cpu_seconds() - start_cpu) / count * 1e3)
        print(
            f"round {epoch + 1}/{rounds} (units/s): "
            + ", ".join(f"{mode} {values[-1]:.0f}" for mode, values in rates.items()),
            flush=True,
        )
    return rates, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shards",
        type=Path,
        help="a built shard set at 224 px (default: build "
        "the demo cohort in a temporary directory)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pgo-loader-bench-") as tmp:
        shard_dir = args.shards or build_demo(Path(tmp) / "demo")
        data = open_fold(shard_dir, FOLD)
        print(
            f"shards {shard_dir}: {data.manifest['counts']['units']} units, image "
            f"{data.image['size']} px; fold {FOLD} train: {data.units('train')} units; "
            f"batch {args.batch_size}, view {IMAGE_SIZE} px"
        )
        load_before = os.getloadavg()[0]
        rates, cpu = measure(shard_dir, args.rounds, args.batch_size)
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    baseline = medians["decode-only baseline"]
    print(
        f"\nmedian of {args.rounds} rounds; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after:"
    )
    print(f"  {'mode':24s} {'units/s':>8s}  {'ratio':>5s}  {'CPU ms/unit':>11s}")
    for mode, value in medians.items():
        print(
            f"  {mode:24s} {value:8.1f}  {value / baseline:5.2f}  "
            f"{statistics.median(cpu[mode]):11.2f}"
        )
    ratio = medians["loader, 2 workers"] / baseline
    print(
        f"\nloader with 2 workers / decode-only loop = {ratio:.2f} (target >= 0.8: "
        f"{'met' if ratio >= 0.8 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
