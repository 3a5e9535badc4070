"""hpc_pgo.launch.plan: the planned array of a composed config (what --dry-run prints)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from hpc_pgo.config import compose, resolve_run_dir
from hpc_pgo.launch.plan import FoldPlan, folds_at_once, format_plan, plan_array


def test_local_plan_one_entry_per_fold():
    cfg = compose(["folds=0,3,7", "cluster.threads_per_fold=2", "run_dir=/scratch/r1"])
    plans = plan_array(cfg)
    assert [p.fold for p in plans] == [0, 3, 7]
    for plan in plans:
        assert plan == FoldPlan(
            fold=plan.fold, kind="local", nodes=1, tasks_per_node=1, cpus_per_task=2,
            gpus_per_node=0, mem_gb=None, time_min=cfg.cluster.time, threads=2,
            out_dir=Path("/scratch/r1") / f"fold_{plan.fold}",
        )  # fmt: skip
    assert folds_at_once(cfg) == min(cfg.cluster.parallel, 3)


def test_slurm_plan_carries_the_sbatch_resources():
    cfg = compose(
        ["cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=4", "cluster.cpus_per_task=6",
         "cluster.mem_gb=100", "cluster.time=90", "cluster.array_parallelism=5"]
    )  # fmt: skip
    plans = plan_array(cfg)
    assert len(plans) == cfg.data.n_splits
    assert {
        (p.kind, p.nodes, p.tasks_per_node, p.cpus_per_task, p.mem_gb, p.time_min, p.threads)
        for p in plans
    } == {("slurm", 2, 4, 6, 100, 90, 6)}
    assert folds_at_once(cfg) == 5
    assert all(p.out_dir is None for p in plans)  # run_dir not set yet


def test_format_plan_one_line_per_fold():
    cfg = compose(["folds=2-4", "cluster=slurm", "cluster.mem_gb=null"])
    cfg.run_dir = str(resolve_run_dir(cfg, now=datetime(2026, 1, 2, 3, 4, 5), cwd=Path("/w")))
    assert cfg.run_dir == "/w/runs/demo-fusion/20260102-030405"
    lines = format_plan(cfg, plan_array(cfg)).splitlines()
    assert lines[0].startswith("planned array: 3 fold(s) [2-4] on cluster=slurm")
    assert lines[1].split() == [
        "fold",
        "kind",
        "nodes",
        "tasks/node",
        "cpus/task",
        "gpus/node",
        "mem",
        "time",
        "threads",
        "out_dir",
    ]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["2", "3", "4"]
    assert all(r[6] == "-" and r[7] == f"{cfg.cluster.time}min" for r in rows)
    assert rows[0][-1] == "/w/runs/demo-fusion/20260102-030405/fold_2"


def test_relative_run_dir_is_anchored_at_cwd():
    cfg = compose(["run_dir=runs/mine"])
    assert resolve_run_dir(cfg, cwd=Path("/base")) == Path("/base/runs/mine")
