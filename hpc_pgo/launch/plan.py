"""The planned job array of a composed config: one entry per fold with the resources it asks for.

What `launch/submit.py --dry-run` prints, and what the executors will be given: a fold is one
array task of `nodes` x `tasks_per_node` ranks (DeepSpeed data parallel), each rank with
`cpus_per_task` cores running `threads` torch threads. Resources are read from the cluster group
by a small function per executor kind (local, slurm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from hpc_pgo.config.folds import format_folds
from hpc_pgo.fold_outputs import fold_dir


@dataclass(frozen=True)
class FoldPlan:
    """Resources of one fold's array task.

    mem_gb: memory per node in GiB, None = no request (the executor's or site's default);
    time_min: wall-clock limit in minutes; threads: torch threads per rank;
    out_dir: <run_dir>/fold_<fold>, None while the config has no run_dir.
    """

    fold: int
    kind: str
    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    mem_gb: float | None
    time_min: int
    threads: int
    out_dir: Path | None


def _local_resources(cluster: DictConfig) -> dict:
    """LocalExecutor: ranks share this machine; each rank runs threads_per_fold threads."""
    return dict(
        nodes=cluster.nodes,
        tasks_per_node=cluster.tasks_per_node,
        cpus_per_task=cluster.threads_per_fold,
        gpus_per_node=cluster.gpus_per_node,
        mem_gb=None,
        time_min=cluster.time,
        threads=cluster.threads_per_fold,
    )


def _slurm_resources(cluster: DictConfig) -> dict:
    """Slurm array task: sbatch --nodes --ntasks-per-node --cpus-per-task --gpus-per-node --mem --time."""
    return dict(
        nodes=cluster.nodes,
        tasks_per_node=cluster.tasks_per_node,
        cpus_per_task=cluster.cpus_per_task,
        gpus_per_node=cluster.gpus_per_node,
        mem_gb=cluster.mem_gb,
        time_min=cluster.time,
        threads=cluster.cpus_per_task,
    )


_RESOURCES: dict[str, Callable[[DictConfig], dict]] = {
    "local": _local_resources,
    "slurm": _slurm_resources,
}

# The columns of format_plan's table, one row per fold.
COLUMNS = (
    "fold", "kind", "nodes", "tasks/node", "cpus/task", "gpus/node", "mem", "time", "threads",
    "out_dir",
)  # fmt: skip

# How many folds an executor runs at once: cluster.parallel (local), array_parallelism (slurm).
_PARALLEL_KEY = {"local": "parallel", "slurm": "array_parallelism"}


def plan_array(cfg: DictConfig) -> list[FoldPlan]:
    """One FoldPlan per fold of cfg.folds (a composed config), in fold order."""
    kind = cfg.cluster.kind
    resources = _RESOURCES[kind](cfg.cluster)
    run_dir = cfg.run_dir
    return [
        FoldPlan(
            fold=fold,
            kind=kind,
            out_dir=None if run_dir is None else fold_dir(run_dir, fold),
            **resources,
        )
        for fold in cfg.folds
    ]


def folds_at_once(cfg: DictConfig) -> int:
    """Folds running at the same time: the executor's parallelism, at most the number of folds."""
    return max(1, min(cfg.cluster[_PARALLEL_KEY[cfg.cluster.kind]], len(cfg.folds)))


def format_plan(cfg: DictConfig, plans: list[FoldPlan]) -> str:
    """The plan as text: a summary line, a header, then one aligned line per fold."""
    kind = cfg.cluster.kind
    summary = (
        f"planned array: {len(plans)} fold(s) [{format_folds(p.fold for p in plans)}] "
        f"on cluster={cfg.groups.cluster} ({kind}), {folds_at_once(cfg)} at a time, "
        f"{cfg.cluster.nodes * cfg.cluster.tasks_per_node} rank(s) per fold; "
        f"run_dir: {cfg.run_dir if cfg.run_dir is not None else '(not set)'}"
    )
    rows = [COLUMNS, *(_row(p) for p in plans)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join([summary, *lines])


def _row(p: FoldPlan) -> tuple[str, ...]:
    """One fold's cells, in COLUMNS order; '-' where nothing is requested or known."""
    return (
        str(p.fold), p.kind, str(p.nodes), str(p.tasks_per_node), str(p.cpus_per_task),
        str(p.gpus_per_node), "-" if p.mem_gb is None else f"{p.mem_gb:g}G", f"{p.time_min}min",
        str(p.threads), "-" if p.out_dir is None else str(p.out_dir),
    )  # fmt: skip
