"""Worker processes for the distributed engine tests: real DeepSpeed on gloo, one process per rank.

``spawn_run(world, scenarios, out_dir)`` starts `world` processes; each runs every scenario in
order (a fresh model and DeepSpeed engine per scenario) and writes its results to
out_dir/rank<r>.pt, which the tests compare.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

from tests.engine.toy import TwoBranch, make_batch, rank_slice

STEPS = 4
STEPS_PER_EPOCH = 2


def base_config(**overrides) -> dict:
    """Engine config: Adam with tiny eps (first step: |dp| = lr exactly), L1, decay, linear schedule."""
    cfg = {
        "seed": 3,
        "train": {
            "lr": 0.05,
            "epochs": 2,
            "batch_size": 16,
            "weight_decay": 1e-3,
            "lr_schedule": "linear",
            "l1_genomic": 1e-3,
            "adam_eps": 1e-12,
        },
        "balance": {
            "mode": "rho",
            "alpha": 1.0,
            "start_epoch": 0,
            "end_epoch": None,
            "noise": False,
        },
        "deepspeed": {"zero_optimization": {"stage": 0}},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return cfg


def split_sizes(n: int, world: int, uneven: bool) -> list[int]:
    """Per-rank batch sizes: equal, or (for world 2) 7 and 9 of 16 to exercise padding."""
    if world == 1:
        return [n]
    if uneven:
        return [n // 2 - 1, n - (n // 2 - 1)]
    return [n // world] * world


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in model.named_parameters()}


def run_scenario(env, name: str, spec: dict, ckpt_dir: Path) -> dict:
    """Train STEPS steps of one scenario; record stats and parameters (plus the optional extras)."""
    from hpc_pgo.engine import build_engine
    from hpc_pgo.errors import PgoError

    cfg = base_config(**spec.get("overrides", {}))
    model = TwoBranch(seed=0)
    try:
        engine = build_engine(model, cfg, steps_per_epoch=STEPS_PER_EPOCH, dist_env=env)
    except PgoError as err:
        return {"build_error": str(err)}
    sizes = split_sizes(16, env.world_size, spec.get("uneven", False))
    out = {"stats": [], "params": [_params(model)]}
    for step in range(STEPS):
        batch = rank_slice(make_batch(16, seed=step), env.rank, sizes)
        out["stats"].append(engine.train_step(batch, epoch=step // STEPS_PER_EPOCH))
        out["params"].append(_params(model))
    if spec.get("no_event"):
        batch = rank_slice(make_batch(16, seed=99, events=False), env.rank, sizes)
        out["no_event"] = engine.train_step(batch, epoch=1)
        out["params_no_event"] = _params(model)
    if spec.get("nan"):
        batch = rank_slice(make_batch(16, seed=5), env.rank, sizes)
        batch["omic"][0, 0] = float("nan")
        try:
            engine.train_step(batch, epoch=1)
            out["nan_error"] = None
        except PgoError as err:
            out["nan_error"] = str(err)
    if spec.get("checkpoint"):
        # Save, take one more step; then a fresh engine on a differently initialised model loads
        # the checkpoint and takes the same step.
        engine.save(ckpt_dir / name, client_state={"epoch": 1, "note": "x"})
        batch = rank_slice(make_batch(16, seed=7), env.rank, sizes)
        out["continued"] = engine.train_step(batch, epoch=1)
        out["continued_params"] = _params(model)
        model2 = TwoBranch(seed=1)
        engine2 = build_engine(model2, cfg, steps_per_epoch=STEPS_PER_EPOCH, dist_env=env)
        out["client_state"] = engine2.load(ckpt_dir / name)
        out["loaded_params"] = _params(model2)
        out["resumed"] = engine2.train_step(batch, epoch=1)
        out["resumed_params"] = _params(model2)
    return out


def _worker(rank: int, world: int, port: int, scenarios: dict, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
    )
    from hpc_pgo.engine.distributed import setup_distributed, teardown_distributed

    out_dir = Path(out_dir)
    results: dict = {}
    try:
        env = setup_distributed()
        for name, spec in scenarios.items():
            results[name] = run_scenario(env, name, spec, out_dir / "checkpoints")
    except Exception:  # reported to the test through the results file
        results["worker_error"] = traceback.format_exc()
    finally:
        torch.save(results, out_dir / f"rank{rank}.pt")
        teardown_distributed()


def spawn_run(world: int, scenarios: dict, out_dir: Path) -> list[dict]:
    """Run the scenarios on `world` gloo ranks; return each rank's results (rank order)."""
    from hpc_pgo.engine.distributed import find_free_port

    out_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(
        _worker, args=(world, find_free_port(), scenarios, str(out_dir)), nprocs=world, join=True
    )
    results = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, res in enumerate(results):
        assert "worker_error" not in res, f"rank {rank} failed:\n{res['worker_error']}"
    return results
