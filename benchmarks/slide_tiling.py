#!/usr/bin/env python
"""Building a slide cohort against a bare OpenSlide read + PNG encode loop over the same tiles.

    .venv/bin/python benchmarks/slide_tiling.py [--slides 8] [--size 8192] [--workers 2]
        [--rounds 3] [--dir DIR]

1. Input: `python -m hpc_pgo.data.synthetic_slides` (pyramidal Aperio TIFFs, 256 px JPEG tiles,
   20x; documented there) writes --slides slides of --size x --size level-0 px and their cohort
   spec under --dir (default: a temporary directory), unless they are there already.
2. BUILD: `pgo-shards build --spec cohort.yaml --workers W` in this process (its imports done
   before the clock starts): tissue mask, tile choice, read, PNG encode, shards, manifest.
3. BASELINE: the tiles the build kept (their names in the manifest), read with
   `OpenSlide.read_region` at level 0 and encoded with the build's own PNG encoder, by W forked
   worker processes (one slide per task, multiprocessing.Pool), nothing else.
Rounds alternate the two; the median of each is printed in tiles/s, then BUILD / BASELINE.
Target: >= 0.8 with the workers given. The load average is printed beside it: on a shared
machine the wall-clock ratio depends on what else runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_pgo.data import synthetic_slides  # noqa: E402
from hpc_pgo.data.build import build_cohort  # noqa: E402
from hpc_pgo.data.images import encode_png  # noqa: E402
from hpc_pgo.data.slides import _on_white  # noqa: E402

_TILE = re.compile(r"^(?P<slide>.+)_y(?P<y>\d{6})_x(?P<x>\d{6})$")


def tiles_of(shard_dir: Path, slides_dir: Path) -> dict[Path, list[tuple[int, int]]]:
    """Slide file -> the (x0, y0) of the tiles the build kept, from the shards' sample keys
    (`<patient>__<slide stem>_y<y0>_x<x0>`)."""
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    files = {p.stem: p for p in slides_dir.iterdir()}
    out: dict[Path, list[tuple[int, int]]] = {}
    for shard in manifest["shards"]:
        with tarfile.open(shard_dir / shard["name"]) as tar:
            for name in tar.getnames():
                if not name.endswith(".png"):
                    continue
                m = _TILE.match(name[: -len(".png")].split("__", 1)[1])
                out.setdefault(files[m["slide"]], []).append((int(m["x"]), int(m["y"])))
    return out


def _read_and_encode(job: tuple[Path, list[tuple[int, int]], int]) -> int:
    import openslide

    path, coords, size = job
    slide = openslide.OpenSlide(path)
    total = 0
    for x, y in coords:
        total += len(encode_png(_on_white(slide.read_region((x, y), 0, (size, size)))))
    slide.close()
    return total


def baseline(tiles: dict[Path, list[tuple[int, int]]], workers: int, size: int) -> float:
    """Seconds for the bare loop over the same tiles with `workers` processes."""
    jobs = [(path, coords, size) for path, coords in sorted(tiles.items())]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        sum(pool.imap_unordered(_read_and_encode, jobs))
    return time.perf_counter() - start


def build(spec: Path, out: Path, workers: int) -> float:
    start = time.perf_counter()
    build_cohort(spec, out, workers=workers, progress=False, force=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=8192, help="level-0 px per side")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="pgo-slides-"))
    cohort = root / f"cohort-{args.slides}x{args.size}"
    if not (cohort / "cohort.yaml").is_file():
        start = time.perf_counter()
        synthetic_slides.write_cohort(cohort, args.slides, args.size, args.size, None, 0, 80)
        print(f"wrote {args.slides} slides in {time.perf_counter() - start:.1f} s: {cohort}")
    spec, out = cohort / "cohort.yaml", root / "shards"
    size = synthetic_slides.TILE

    times: dict[str, list[float]] = {"build": [], "baseline": []}
    tiles = None
    for _ in range(args.rounds):
        times["build"].append(build(spec, out, args.workers))
        tiles = tiles_of(out, cohort / "slides")
        times["baseline"].append(baseline(tiles, args.workers, size))
    n = sum(len(c) for c in tiles.values())
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()[0]
    print(f"{n} tiles of {size} px from {args.slides} slides, {args.workers} workers, "
          f"{args.rounds} rounds (median), load average {load:.2f}")  # fmt: skip
    for key in ("build", "baseline"):
        runs = ", ".join(f"{t:.2f}" for t in times[key])
        print(f"  {key:9s} {rate[key]:8.1f} tiles/s   (s per round: {runs})")
    print(f"  build / baseline: {rate['build'] / rate['baseline']:.2f}   (target >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
