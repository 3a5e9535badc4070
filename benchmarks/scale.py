#!/usr/bin/env python
"""How building and reading a slide cohort grow with the cohort: 1x, 4x, 16x, and on paper 3M tiles.

    .venv/bin/python benchmarks/scale.py [--base-slides 4] [--size 4096] [--scales 1,4,16]
        [--workers 2] [--image-size 224] [--dir DIR] [--keep]

For each scale s, a synthetic slide cohort of s x --base-slides slides of --size px
(`python -m hpc_pgo.data.synthetic_slides`: pyramidal Aperio TIFFs, 256 px JPEG tiles at 20x;
every tile with >= 50% tissue kept) is written and built with `pgo-shards build --workers W`
(shards of at most 256 units, so the shard count grows with the cohort as on a real one).
Then, each in a fresh process (no cache of an earlier measurement):

- build: wall seconds of the build (slides already written), shard bytes;
- fit: rank 0's fit of the fold's train standardizer (one row per train patient from the
  patient table, omics.npz; the other ranks load the file it saves): seconds and shards indexed
  (0: no tar is read);
- start-up, one rank, share fixed: the last rank of W = s ranks (each rank's share of the train
  split is the same at every scale) opens fold 0, loads the standardizer, indexes, verifies and
  plans its first train epoch and reads its first batch (what a fold's rank does before its
  first step): seconds and the shards it indexed; then, in another process, the same under
  tracemalloc: the peak of the Python and numpy memory it allocates (index, keys, plans,
  standardizer; MiB, "mem");
- start-up, one rank, whole cohort: the same for rank 0 of 1 (its fit not included);
- epoch: units/s of one train epoch of fold 0 read by 2 ranks at once (two processes, the
  images decoded and augmented at --image-size, omics standardised; no model), after each
  rank's first batch (steady state); the better of two epochs. The epoch time is the epoch's
  units (all its batches) at that rate: the first batch's start-up is the start-up rows' figure,
  and left in, it would weigh more in a small cohort's short epoch than in a large one's.

Each quantity's growth exponent is the least-squares slope of log(quantity) against log(units)
over the scales. Targets: build and epoch time exponents <= 1.05; start-up seconds and memory
of a rank whose share is fixed, exponent <= 0.2. Last, an extrapolation on paper to 1,500 slides
x 2,000 tiles read by 64 ranks, from the per-tile figures of the largest scale: bytes, build
core-hours, and a rank's start-up (its share is 47k tiles: the whole-cohort start-up per unit
times that share, plus the fixed-share constant).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARD_MAX_COUNT = 256
TARGET_SLIDES, TARGET_TILES, TARGET_RANKS = 1500, 2000, 64


# ----------------------------------------------------------------------------- probes (subprocess)


def _groups(shard_dir: Path) -> list[str]:
    return sorted(json.loads((shard_dir / "manifest.json").read_text())["groups"])


def probe_fit(shard_dir: Path, out: Path) -> dict:
    """Rank 0's standardizer fit on fold 0's train patients, saved to `out` (the other ranks
    of a fold load that file): seconds and shards indexed."""
    from hpc_pgo.data.folds import open_fold
    from hpc_pgo.data.standardizer import Standardizer

    opened = _tars_indexed()
    start = time.perf_counter()
    data = open_fold(shard_dir, 0)
    Standardizer.fit(shard_dir, data.train, _groups(shard_dir)).save(out)
    return {
        "seconds": time.perf_counter() - start,
        "shards_indexed": _tars_indexed() - opened,
        "patients": len(data.train),
    }


def _loader_args(shard_dir: Path, image_size: int, std: Path) -> dict:
    from hpc_pgo.data.folds import open_fold
    from hpc_pgo.data.standardizer import Standardizer

    open_fold(shard_dir, 0)
    return {
        "groups": _groups(shard_dir),
        "image_size": image_size,
        "standardizer": Standardizer.load(std),
    }


def _tars_indexed() -> int:
    """How many shard tars this process has indexed so far (the tar index's reads)."""
    from hpc_pgo.data.tarindex import TAR_INDEX

    return TAR_INDEX.reads


def probe_startup(
    shard_dir: Path, std: Path, rank: int, world: int, image_size: int, batch: int
) -> dict:
    """What a fold's rank does before its first step, in this process, once rank 0 has saved
    the standardizer: open fold 0, load the standardizer, make_loader (train, epoch 0) and read
    the first batch. Seconds, peak RSS and what the start-up added to it, shards indexed, units
    of its plan."""
    import torch  # noqa: F401  (imported before the clock: every rank has it already)

    from hpc_pgo.data import loader

    torch.set_num_threads(1)
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    opened = _tars_indexed()
    start = time.perf_counter()
    args = _loader_args(shard_dir, image_size, std)
    fold_loader = loader.make_loader(
        shard_dir, 0, "train", batch_size=batch, rank=rank, world_size=world, num_workers=0,
        **args,
    )  # fmt: skip
    next(iter(fold_loader))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "peak_rss_mb": peak / 1024,
        "rss_growth_mb": (peak - before_rss) / 1024,
        "shards_indexed": _tars_indexed() - opened,
        "units": len(fold_loader.plan.keys),
    }


def probe_memory(
    shard_dir: Path, std: Path, rank: int, world: int, image_size: int, batch: int
) -> dict:
    """The same start-up under tracemalloc: the peak of the Python and numpy allocations it
    makes (index, keys, plans, standardizer), in MiB. Separate from probe_startup: tracing
    slows the start-up it measures."""
    import tracemalloc

    import torch  # noqa: F401

    from hpc_pgo.data import loader

    tracemalloc.start()
    args = _loader_args(shard_dir, image_size, std)
    fold_loader = loader.make_loader(
        shard_dir, 0, "train", batch_size=batch, rank=rank, world_size=world, num_workers=0,
        **args,
    )  # fmt: skip
    next(iter(fold_loader))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"traced_peak_mb": peak / 2**20}


def _epoch_rank(args: tuple) -> tuple[int, float, int]:
    shard_dir, std, rank, world, image_size, batch = args
    import torch

    from hpc_pgo.data import loader

    torch.set_num_threads(1)
    kwargs = _loader_args(shard_dir, image_size, std)
    fold_loader = loader.make_loader(
        shard_dir, 0, "train", batch_size=batch, rank=rank, world_size=world, num_workers=0,
        **kwargs,
    )  # fmt: skip
    batches = iter(fold_loader)
    first = next(batches)
    units, start = 0, time.perf_counter()
    for b in batches:
        units += len(b["key"])
    del first
    return units, time.perf_counter() - start, len(fold_loader.plan.keys)


def probe_epoch(shard_dir: Path, std: Path, image_size: int, batch: int) -> dict:
    """One train epoch of fold 0 by 2 ranks in 2 processes: units/s after the first batches."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        out = pool.map(_epoch_rank, [(shard_dir, std, r, 2, image_size, batch) for r in (0, 1)])
    units, seconds = sum(u for u, _, _ in out), max(s for _, s, _ in out)
    rate = units / seconds
    epoch_units = sum(n for _, _, n in out)  # the whole epoch's, first batches included
    return {"units": units, "seconds": seconds, "units_per_s": rate,
            "epoch_units": epoch_units, "epoch_s": epoch_units / rate}  # fmt: skip


def run_probe(kind: str, *args: object) -> dict:
    """A probe in a fresh interpreter (no cache carried over); its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--probe", kind, *map(str, args)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"probe {kind} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the scales


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    lx, ly = np.log(xs), np.log(ys)
    return float(np.polyfit(lx, ly, 1)[0])


def measure_scale(root: Path, scale: int, args: argparse.Namespace) -> dict:
    from hpc_pgo.data import synthetic_slides
    from hpc_pgo.data.build import build_cohort

    cohort = root / f"cohort-x{scale}"
    slides = scale * args.base_slides
    if not (cohort / "cohort.yaml").is_file():
        synthetic_slides.write_cohort(cohort, slides, args.size, args.size, None, scale, 80)
    shards = root / f"shards-x{scale}"
    start = time.perf_counter()
    manifest = build_cohort(
        cohort / "cohort.yaml", shards, workers=args.workers, progress=False, force=True,
        shard_max_count=SHARD_MAX_COUNT,
    )  # fmt: skip
    build_s = time.perf_counter() - start
    row = {
        "scale": scale,
        "slides": slides,
        "units": manifest["counts"]["units"],
        "shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
        "build_s": build_s,
    }
    std = root / f"standardizer-x{scale}.json"
    fit = run_probe("fit", shards, std)
    # a rank other than 0 (the last one) when there are several: rank 0 also fits the standardizer
    last = scale - 1
    fixed = run_probe("startup", shards, std, last, scale, args.image_size, args.batch)
    whole = run_probe("startup", shards, std, 0, 1, args.image_size, args.batch)
    memory_fixed = run_probe("memory", shards, std, last, scale, args.image_size, args.batch)
    memory_whole = run_probe("memory", shards, std, 0, 1, args.image_size, args.batch)
    # the better of two epochs: on a shared machine a slow one says more about the neighbours
    epoch = max(
        (run_probe("epoch", shards, std, args.image_size, args.batch) for _ in range(2)),
        key=lambda e: e["units_per_s"],
    )
    row.update(
        fit_s=fit["seconds"], fit_indexed=fit["shards_indexed"], train_patients=fit["patients"],
        startup_fixed_s=fixed["seconds"], rss_fixed_mb=memory_fixed["traced_peak_mb"],
        indexed_fixed=fixed["shards_indexed"], startup_whole_s=whole["seconds"],
        rss_whole_mb=memory_whole["traced_peak_mb"], indexed_whole=whole["shards_indexed"],
        epoch_units_per_s=epoch["units_per_s"], epoch_s=epoch["epoch_s"],
    )  # fmt: skip
    return row


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nscales {', '.join(str(r['scale']) for r in rows)} x {args.base_slides} slides of "
          f"{args.size} px; {args.workers} build workers; image {args.image_size} px; load "
          f"average {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    head = ("scale", "slides", "units", "shards", "MB", "build s", "fit s (idx)", "start s (W=s)",
            "mem MB (W=s)", "idx (W=s)", "start s (W=1)", "mem MB (W=1)", "idx (W=1)",
            "epoch units/s")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = (r["scale"], r["slides"], r["units"], r["shards"], f"{r['bytes'] / 2**20:.0f}",
                 f"{r['build_s']:.1f}", f"{r['fit_s']:.2f} ({r['fit_indexed']})",
                 f"{r['startup_fixed_s']:.2f}", f"{r['rss_fixed_mb']:.1f}",
                 r["indexed_fixed"], f"{r['startup_whole_s']:.2f}", f"{r['rss_whole_mb']:.1f}",
                 r["indexed_whole"], f"{r['epoch_units_per_s']:.0f}")  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")
    units = [r["units"] for r in rows]
    exps = {
        "build time": (slope(units, [r["build_s"] for r in rows]), 1.05),
        "shard bytes": (slope(units, [r["bytes"] for r in rows]), 1.05),
        "epoch time (2 ranks)": (slope(units, [r["epoch_s"] for r in rows]), 1.05),
        "rank start-up, share fixed": (slope(units, [r["startup_fixed_s"] for r in rows]), 0.2),
        "rank start-up memory, share fixed": (slope(units, [r["rss_fixed_mb"] for r in rows]), 0.2),
        "rank start-up, whole cohort": (slope(units, [r["startup_whole_s"] for r in rows]), None),
        "rank 0's standardizer fit": (slope(units, [r["fit_s"] for r in rows]), None),
        "rank start-up memory, whole cohort": (
            slope(units, [r["rss_whole_mb"] for r in rows]),
            None,
        ),
    }
    print("\ngrowth exponents (log-log slope against units):")
    for name, (value, target) in exps.items():
        verdict = "" if target is None else (" ok" if value <= target else " OVER")
        shown = f"(target <= {target})" if target is not None else "(no target)"
        print(f"  {name:30s} {value:6.2f}  {shown}{verdict}")

    big = rows[-1]
    tiles = TARGET_SLIDES * TARGET_TILES
    per_tile_bytes = big["bytes"] / big["units"]
    core_s_per_tile = big["build_s"] * args.workers / big["units"]
    share = tiles / TARGET_RANKS
    per_unit_start = max(big["startup_whole_s"] - big["startup_fixed_s"], 0.0) / max(
        big["units"] - big["units"] / big["scale"], 1
    )
    start_64 = big["startup_fixed_s"] + per_unit_start * share
    # the fit reads one row per train patient: its time per patient at the largest scale
    fit_per_patient = big["fit_s"] / big["train_patients"]
    train_target = round(TARGET_SLIDES * big["train_patients"] / big["slides"])
    fit_target = fit_per_patient * train_target
    print(
        f"\non paper: {TARGET_SLIDES} slides x {TARGET_TILES} tiles = {tiles:,} tiles, "
        f"{TARGET_RANKS} ranks ({share:,.0f} tiles each)\n"
        f"  shard bytes      {per_tile_bytes * tiles / 1e9:,.0f} GB "
        f"({per_tile_bytes / 1e3:.0f} kB per tile)\n"
        f"  build            {core_s_per_tile * tiles / 3600:,.0f} core-hours "
        f"({core_s_per_tile * 1e3:.1f} core-ms per tile; {core_s_per_tile * tiles / 3600 / 64:.1f} "
        f"h on 64 cores)\n"
        f"  rank start-up    ~{start_64:.0f} s ({big['startup_fixed_s']:.2f} s fixed + "
        f"{per_unit_start * 1e3:.3f} ms per unit of its share)\n"
        f"  rank 0's fit     ~{fit_target:.1f} s ({fit_per_patient * 1e3:.2f} ms per train "
        f"patient, {train_target:,} of them; no shard indexed)"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        kind, shard_dir, std = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        if kind == "fit":
            result = probe_fit(shard_dir, std)
        elif kind in ("startup", "memory"):
            rank, world, image_size, batch = map(int, sys.argv[5:9])
            probe = probe_startup if kind == "startup" else probe_memory
            result = probe(shard_dir, std, rank, world, image_size, batch)
        else:
            image_size, batch = map(int, sys.argv[5:7])
            result = probe_epoch(shard_dir, std, image_size, batch)
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-slides", type=int, default=4)
    parser.add_argument("--size", type=int, default=4096, help="level-0 px per slide side")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the slides and shards")
    args = parser.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    root = args.dir or Path(tempfile.mkdtemp(prefix="pgo-scale-"))
    rows = []
    try:
        for scale in scales:
            start = time.perf_counter()
            rows.append(measure_scale(root, scale, args))
            print(f"scale {scale}: {rows[-1]['units']} units, measured in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        report(rows, args)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(math.isfinite(r["build_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
