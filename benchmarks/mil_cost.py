#!/usr/bin/env python
"""Per-epoch cost: frozen tile features + attention MIL against end-to-end training, at equal tiles.

    .venv/bin/python benchmarks/mil_cost.py [--patients 100] [--rois 8] [--arch lcnet_050]
        [--image-size 64] [--threads 2] [--rounds 2] [--dir DIR]

1. Input: a demo cohort (`pgo-shards demo --patients P --rois R`, 96 px ROIs) in --dir (default a
   temporary directory); every patient has R tiles.
2. END-TO-END (the baseline): `train_fold` of fold 0, model=fusion_small with
   model.modalities=[image] model.image.arch=ARCH at data.image_size=S: the timm backbone forward
   and backward on every train tile every epoch, one unit per sample (the demo preset's loop).
3. EMBED (paid once): `pgo-shards embed-tiles` with the same ARCH, frozen, over every tile.
4. MIL: `train_fold` of fold 0, model=image_abmil with model.image.bag.max_tiles >= R (every tile
   of every train patient each epoch: the same tiles as END-TO-END), one bag per patient.
Per-epoch cost is measured by difference, (wall(E=3) - wall(E=1)) / 2 from each run's
metrics.json wall_time_s, so set-up and the test pass cancel; each mode first trains one
warm-up fold (the first call in a process pays lazy imports and allocations), then the median of
--rounds such pairs is taken. Printed: seconds per epoch of each,
END-TO-END / MIL (target >= 50), the one-off embedding, and the epochs after which embedding once
has paid for itself. The load average is printed beside it: on a shared machine wall-clock ratios
move with what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fold_wall(tokens: list[str], run_dir: Path) -> float:
    """wall_time_s of fold 0 of the composed config, trained in this process."""
    from hpc_pgo.config import compose
    from hpc_pgo.train.fold import train_fold

    metrics = train_fold(compose(tokens), 0, run_dir)
    return float(metrics["wall_time_s"])


def per_epoch(tokens: list[str], root: Path, name: str, rounds: int) -> float:
    """Seconds per training epoch of `tokens`: after a warm-up fold (first-call costs: lazy
    imports, allocator, thread pools), the median over rounds of (wall(3 epochs) - wall(1)) / 2."""

    def wall(epochs: int, tag: str) -> float:
        extra = [f"train.epochs={epochs}", "train.checkpoint_every=100"]
        return fold_wall([*tokens, *extra], root / f"{name}-{tag}-e{epochs}")

    wall(1, "warmup")
    return statistics.median((wall(3, f"r{r}") - wall(1, f"r{r}")) / 2 for r in range(rounds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--rois", type=int, default=8)
    parser.add_argument("--arch", default="lcnet_050")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    root = args.dir or Path(tempfile.mkdtemp(prefix="mil-cost-"))
    root.mkdir(parents=True, exist_ok=True)
    shards = root / "shards"
    py = sys.executable
    if not (shards / "manifest.json").is_file():
        subprocess.run(
            [py, "-m", "hpc_pgo.data", "demo", "--out", str(shards), "--patients",
             str(args.patients), "--rois", str(args.rois), "--no-progress"],
            check=True,
        )  # fmt: skip
    common = [f"data.shards={shards}", "train.num_workers=0", "model.modalities=[image]",
              f"model.image.arch={args.arch}"]  # fmt: skip
    e2e = per_epoch(
        [*common, "model=fusion_small", f"data.image_size={args.image_size}"],
        root,
        "e2e",
        args.rounds,
    )
    started = time.perf_counter()
    subprocess.run(
        [py, "-m", "hpc_pgo.data", "embed-tiles", str(shards), "--arch", args.arch,
         "--input-size", str(args.image_size), "--no-progress", "--force"],
        check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
    )  # fmt: skip
    embed = time.perf_counter() - started
    mil = per_epoch(
        [*common, "model=image_abmil", f"model.image.bag.max_tiles={max(args.rois, 1)}"],
        root, "mil", args.rounds,
    )  # fmt: skip
    manifest = json.loads((shards / "manifest.json").read_text())
    tiles = sum(s["samples"] for s in manifest["shards"])
    train_patients = len(manifest["splits"]["folds"][0]["train"])
    print(f"cohort: {args.patients} patients x {args.rois} tiles = {tiles} tiles; "
          f"fold 0 train patients: {train_patients}; arch {args.arch} at {args.image_size} px; "
          f"torch threads {args.threads}")  # fmt: skip
    print(f"END-TO-END   {e2e:9.3f} s/epoch  (backbone forward + backward on every train tile)")
    print(
        f"MIL (ABMIL)  {mil:9.3f} s/epoch  (every train tile's frozen feature, one bag per patient)"
    )
    print(f"EMBED once   {embed:9.3f} s      ({tiles / embed:.0f} tiles/s, all tiles, frozen)")
    ratio = e2e / mil if mil > 0 else float("inf")
    print(f"END-TO-END / MIL per epoch: {ratio:.1f}x (target >= 50)")
    saved = e2e - mil
    if saved > 0:
        print(f"embedding once pays for itself after {embed / saved:.1f} epoch(s)")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
