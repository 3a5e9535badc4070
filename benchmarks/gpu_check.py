"""GPU check for a lent CUDA machine (CI never runs it): prints one table in under 5 minutes.

    python benchmarks/gpu_check.py [--out DIR] [--steps N]

Rows:
1. a demo fold end to end in bf16 on CUDA (pgo-shards demo at 64 px, model=fusion: T2T-ViT-7
   + SNN, concat + rho balancing, 15 epochs): wall time and its C-index;
2. T2T-ViT-14 at 224 px, image-only model, bf16, batch 64: training images per second;
3. the modulated step's overhead there (fusion, T2T-ViT-14 at 224 px + SNN): seconds per step
   with balance.mode=rho over balance.mode=none, measured in the same run (the baseline).

Without CUDA it refuses with one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import hpc_pgo  # noqa: F401  (before timm)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="work directory (default: a temp dir)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per throughput row")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the throughput rows")
    return parser.parse_args(argv)


def demo_fold(work: Path) -> dict:
    """Row 1: fold 0 of the demo cohort, bf16, through the ordinary train_fold."""
    from hpc_pgo.config import compose
    from hpc_pgo.data.cli import main as pgo_shards
    from hpc_pgo.train.fold import train_fold

    shards = work / "demo"
    if not (shards / "manifest.json").is_file():
        pgo_shards(["demo", "--out", str(shards), "--image-size", "64", "--no-progress"])
    cfg = compose(
        [f"data.shards={shards}", "deepspeed.dtype=bf16", "train.epochs=15",
         "train.num_workers=4", "cluster.gpus_per_node=1", "force=true"]
    )  # fmt: skip
    start = time.perf_counter()
    metrics = train_fold(cfg, 0, work / "run")
    return {"wall_s": time.perf_counter() - start, "cindex": metrics["cindex"]}


def synthetic_batch(batch: int, size: int, dims: dict[str, int]) -> dict:
    gen = torch.Generator().manual_seed(0)
    out = {g: torch.randn(batch, d, generator=gen) for g, d in dims.items()}
    out["image"] = torch.randn(batch, 3, size, size, generator=gen)
    out["time"] = torch.rand(batch, generator=gen) * 100
    out["event"] = (torch.rand(batch, generator=gen) < 0.6).float()
    return out


def step_time(modalities: list[str], balance: str, *, steps: int, batch: int) -> float:
    """Seconds per engine.train_step of T2T-ViT-14 at 224 px (+ SNN), bf16, after 3 warm-up steps."""
    from hpc_pgo.engine import build_engine, setup_distributed
    from hpc_pgo.models import build_model

    dims = {"cnv": 60, "mut": 20, "rna": 120}
    torch.manual_seed(0)
    model = build_model(
        {"modalities": modalities, "image": {"arch": "t2t_vit_14"}},
        feature_dims=dims,
        image_size=224,
    )
    cfg = {
        "train": {"lr": 1e-4, "epochs": 1, "batch_size": batch},
        "balance": {"mode": balance},
        "deepspeed": {"zero_optimization": {"stage": 0}, "dtype": "bf16"},
    }
    engine = build_engine(model, cfg, steps_per_epoch=steps + 3, dist_env=setup_distributed())
    data = synthetic_batch(batch, 224, dims)
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            start = time.perf_counter()
        engine.train_step(data, epoch=0)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "error: benchmarks/gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "run it on a lent GPU machine",
            file=sys.stderr,
        )
        return 2
    work = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    rows = []
    fold = demo_fold(work)
    rows.append(
        (
            "demo fold 0, bf16, model=fusion (T2T-ViT-7 64 px)",
            f"{fold['wall_s']:.1f} s",
            f"C-index {fold['cindex']:.3f}",
        )
    )
    image_s = step_time(["image"], "none", steps=args.steps, batch=args.batch)
    rows.append(
        (
            f"T2T-ViT-14 224 px train, bf16, batch {args.batch}",
            f"{args.batch / image_s:.0f} img/s",
            f"{image_s * 1e3:.1f} ms/step",
        )
    )
    plain = step_time(["genomic", "image"], "none", steps=args.steps, batch=args.batch)
    modulated = step_time(["genomic", "image"], "rho", steps=args.steps, batch=args.batch)
    rows.append(
        (
            "fusion step, balance rho vs none (baseline)",
            f"{modulated / plain:.3f}x",
            f"{modulated * 1e3:.1f} vs {plain * 1e3:.1f} ms",
        )
    )
    print(f"device: {torch.cuda.get_device_name(0)}")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
