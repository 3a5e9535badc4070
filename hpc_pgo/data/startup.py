"""What one rank's loader costs before and while it reads: time, memory, shards indexed and hashed.

`rank_startup` makes one rank's loader for one pass over (fold, split) from cold caches (no tar
index, no digest in this process) and iterates it, reading each unit's surv.json only (no image
or omics decode, whose cost does not depend on the cohort's size). It answers how the rank's
start-up and memory grow with the cohort; benchmarks/ calls it on sets of growing size.

    python -m hpc_pgo.data.startup DIR [--fold 0 --split train --rank 0 --world-size 8 ...]

prints its result as one JSON line; run it in a fresh process per measurement for peak_rss_mb
(a process's high-water mark never goes down).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from hpc_pgo.data import loader, tarindex
from hpc_pgo.data.folds import LOADER_SPLITS


def _cold() -> None:
    tarindex.TAR_INDEX.clear()
    tarindex._sha256.cache_clear()


def _one_pass(shard_dir: Path, fold: int, split: str, options: dict) -> tuple[int, int, int]:
    """(units yielded, batches, shards indexed) of one pass from cold caches."""
    _cold()
    reads = tarindex.TAR_INDEX.reads
    made = loader.make_loader(
        shard_dir, fold, split, groups=(), image_size=None, standardizer=None, **options
    )
    indexed = tarindex.TAR_INDEX.reads - reads
    units = batches = 0
    for batch in made:
        units += len(batch["key"])
        batches += 1
    return units, batches, indexed


def rank_startup(
    shard_dir: Path | str,
    fold: int,
    rank: int,
    world_size: int,
    *,
    split: str = "train",
    batch_size: int = 32,
    epoch: int = 0,
    seed: int = 0,
    verify: bool = True,
    memory: bool = True,
) -> dict:
    """One rank's pass over (fold, split) from cold caches, measured.

    Returns {"seconds": wall time of make_loader + iterating it, "units": units it yielded,
    "batches", "shards_indexed": tar files whose headers it read, "shards_hashed": shards it
    hashed (0 when verified.json vouches for them), "python_peak_mb": the peak of Python
    allocations during a second, traced pass (tracemalloc; None without `memory`): the index,
    keys and plan it holds, "peak_rss_mb": the process's resident high-water mark (ru_maxrss)
    so far, meaningful in a fresh process}. Timing is of the untraced pass (tracemalloc slows
    allocation).
    """
    shard_dir = Path(shard_dir)
    options = dict(
        rank=rank, world_size=world_size, batch_size=batch_size, epoch=epoch, seed=seed,
        verify=verify,
    )  # fmt: skip
    start = time.perf_counter()
    units, batches, indexed = _one_pass(shard_dir, fold, split, options)
    seconds = time.perf_counter() - start
    hashed = tarindex._sha256.cache_info().misses
    python_peak = None
    if memory:
        tracemalloc.start()
        try:
            _one_pass(shard_dir, fold, split, options)
            python_peak = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    return {
        "seconds": seconds,
        "units": units,
        "batches": batches,
        "shards_indexed": indexed,
        "shards_hashed": hashed,
        "python_peak_mb": python_peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpc_pgo.data.startup", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("shard_dir")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--split", choices=LOADER_SPLITS, default="train")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the traced pass")
    args = parser.parse_args(argv)
    result = rank_startup(
        args.shard_dir, args.fold, args.rank, args.world_size, split=args.split,
        batch_size=args.batch_size, epoch=args.epoch, verify=not args.no_verify,
        memory=not args.no_memory,
    )  # fmt: skip
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
