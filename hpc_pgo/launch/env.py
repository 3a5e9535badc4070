"""The one place that turns a submitit job's environment into torch's rendezvous variables.

A fold is one submitit job (one array task) of nodes x tasks_per_node processes; every process
is one DeepSpeed rank. submitit's JobEnvironment (Slurm's or the local executor's variables)
says where a process sits; torch and ``hpc_pgo.engine.setup_distributed`` read

    RANK         global rank, 0 .. WORLD_SIZE - 1      (JobEnvironment.global_rank)
    WORLD_SIZE   ranks of the fold                      (JobEnvironment.num_tasks)
    LOCAL_RANK   rank on this node                      (JobEnvironment.local_rank)
    LOCAL_WORLD_SIZE  ranks on this node                (num_tasks // num_nodes)
    MASTER_ADDR  the first node of the job's node list  (JobEnvironment.hostnames[0])
    MASTER_PORT  master_port(job id): one port per fold, so that folds sharing a node never
                 collide, and the same port after a requeue

and the thread count of each rank (OMP_NUM_THREADS, MKL_NUM_THREADS), so that the folds sharing
a machine do not oversubscribe its cores.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass

import submitit

# Ports 20000-31999: above the usual service ports and below Linux's ephemeral range (32768+),
# from which the kernel hands out the local ports of outgoing connections: a rendezvous port
# there can be taken by any connection of any process on the node (EADDRINUSE, seen here).
PORT_BASE = 20000
PORT_SPAN = 12000
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Rendezvous:
    """Where one rank of a fold sits, as the environment variables say it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    threads: int

    def variables(self) -> dict[str, str]:
        """The environment variables of this rank (torch's five, the local size, the threads)."""
        env = {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }
        env.update({name: str(self.threads) for name in THREAD_VARIABLES})
        return env


def master_port(job_id: str) -> int:
    """A port for a fold's rendezvous, from its job id: PORT_BASE + n mod PORT_SPAN.

    job_id: "<array job>_<task>" for a Slurm array task, "<job>" otherwise (the local executor
    uses the controller's pid). n = array_job * 1009 + task for an array task (the tasks of one
    array, fewer than PORT_SPAN, get distinct ports; 1009, a prime, spreads consecutive arrays),
    n = job otherwise (concurrent local folds have distinct pids). A requeued task keeps its port.
    """
    numbers = [int(part) for part in re.findall(r"\d+", job_id)] or [0]
    n = numbers[0] * 1009 + numbers[1] if len(numbers) > 1 else numbers[0]
    return PORT_BASE + n % PORT_SPAN


def rendezvous(job: submitit.JobEnvironment, threads: int) -> Rendezvous:
    """The rendezvous of the current process from submitit's JobEnvironment.

    hostnames is the job's expanded node list (Slurm) or this host (local executor); its first
    entry is the node of global rank 0, where torch's store listens.
    """
    # the local executor runs every rank on this machine: loopback needs no name resolution
    hosts = ["127.0.0.1"] if job.name() == "local" else (list(job.hostnames) or ["127.0.0.1"])
    return Rendezvous(
        rank=job.global_rank,
        world_size=job.num_tasks,
        local_rank=job.local_rank,
        local_world_size=max(1, job.num_tasks // max(1, job.num_nodes)),
        master_addr=hosts[0],
        master_port=master_port(str(job.job_id)),
        threads=threads,
    )


def export_rendezvous(threads: int, environ: MutableMapping[str, str] | None = None) -> Rendezvous:
    """Set this process's rendezvous and thread variables from submitit's JobEnvironment; return it.

    Runs once at the start of a fold task, before torch starts its thread pools; environ defaults
    to os.environ.
    """
    target = os.environ if environ is None else environ
    here = rendezvous(submitit.JobEnvironment(), threads)
    target.update(here.variables())
    return here
