"""Benchmark: one modulated DeepSpeed training step against one plain torch Adam step.

Both train the same model (hpc_pgo.models.build_model: SNN + MLP-B genomic branch, a timm image
encoder, concat head; two copies with identical weights) on the same batch in one process:

  baseline "plain_adam": forward, cox_nll + L1 on the batch, backward, torch Adam step, zero_grad.
  "engine":              Engine.train_step with balance.mode=rho (rho, coefficients, step hooks,
                         global-batch gather (a no-op with one rank), NaN check, DeepSpeed ZeRO 0
                         backward and step, LR schedule).

Steps alternate (baseline, engine, baseline, ...) after warm-up so that load from other
processes hits both alike; the figure is the median per-step wall time of each and their ratio.
Target: ratio <= 1.10.

Usage: python benchmarks/engine_step.py [--steps 10] [--batch 32] [--image-size 64]
       [--arch t2t_vit_7] [--threads T] [--zero 0]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each (default 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="batch size (the paper's 32)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--arch", default="t2t_vit_7", help="timm image encoder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--zero", type=int, default=0, choices=(0, 1, 2), help="ZeRO stage")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    import torch

    from hpc_pgo.engine import build_engine, setup_distributed, teardown_distributed
    from hpc_pgo.models.survival import build_model
    from hpc_pgo.survival import cox_nll

    env = setup_distributed()  # one process: a 1-rank group on a free port
    torch.manual_seed(0)
    dims = {"cnv": 80, "mut": 4, "rna": 240}
    model_cfg = {"image": {"arch": args.arch}}
    engine_model = build_model(model_cfg, feature_dims=dims, image_size=args.image_size)
    plain_model = copy.deepcopy(engine_model)
    n = args.batch
    gen = torch.Generator().manual_seed(1)
    batch = {name: torch.randn(n, d, generator=gen) for name, d in dims.items()}
    batch["image"] = torch.randn(n, 3, args.image_size, args.image_size, generator=gen)
    batch["time"] = torch.rand(n, generator=gen) * 60
    batch["event"] = (torch.rand(n, generator=gen) < 0.6).float()

    train = {
        "lr": 2e-3,
        "epochs": 20,
        "batch_size": n,
        "weight_decay": 4e-4,
        "lr_schedule": "linear",
        "l1_genomic": 3e-4,
    }
    cfg = {
        "train": train,
        "balance": {"mode": "rho", "alpha": 1.0},
        "deepspeed": {"zero_optimization": {"stage": args.zero}, "dtype": "fp32"},
    }
    engine = build_engine(engine_model, cfg, steps_per_epoch=100, dist_env=env)

    groups = [{"params": ps, "name": k} for k, ps in plain_model.param_groups().items() if ps]
    opt = torch.optim.Adam(groups, lr=train["lr"], weight_decay=train["weight_decay"])
    genomic = plain_model.param_groups()["genomic"]

    def plain_step() -> None:
        out = plain_model(batch)
        l1 = train["l1_genomic"] * torch.stack([p.abs().sum() for p in genomic]).sum()
        loss = cox_nll(out["theta"], batch["time"], batch["event"]) + l1
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the engine reads its loss too

    def engine_step() -> None:
        engine.train_step(batch, epoch=0)

    for _ in range(args.warmup):
        plain_step()
        engine_step()
    times: dict[str, list[float]] = {"plain_adam": [], "engine": []}
    for _ in range(args.steps):
        for name, step in (("plain_adam", plain_step), ("engine", engine_step)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["plain_adam"])
    ours = statistics.median(times["engine"])
    n_params = sum(p.numel() for p in engine_model.parameters() if p.requires_grad)
    print(
        f"model: genomic SNN+MLP-B + {args.arch} @ {args.image_size}px, concat head, "
        f"{n_params / 1e6:.2f}M trainable parameters; batch {n}; ZeRO {args.zero}; "
        f"{torch.get_num_threads()} threads; {args.steps} timed steps each"
    )
    print(f"{'step':<12}{'median ms':>12}{'min ms':>10}")
    for name, values in times.items():
        print(f"{name:<12}{statistics.median(values) * 1e3:>12.1f}{min(values) * 1e3:>10.1f}")
    print(f"ratio engine / plain_adam: {ours / base:.3f} (target <= 1.10)")
    teardown_distributed()


if __name__ == "__main__":
    main()
