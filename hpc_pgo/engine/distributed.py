"""The one place that turns the process environment into torch.distributed (and DeepSpeed's comm layer).

Contract with the launch layer: a process that is one of W ranks has all five of RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (torchrun sets them; the submitit task
sets them from Slurm's variables). A process with none of them set is a single-process run:
``setup_distributed`` sets RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR=127.0.0.1 and a free
MASTER_PORT and starts a 1-rank group, because ``deepspeed.initialize`` needs an initialised
process group. A partial set is an error (DeepSpeed would otherwise try MPI discovery and fail).

Backend: NCCL when CUDA is available, else gloo. Device: ``cuda:LOCAL_RANK`` or ``cpu``.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

REQUIRED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, rank on its node, backend, device."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the rank that logs, draws progress bars and writes shared files)."""
        return self.rank == 0


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rendezvous_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The five rendezvous variables from ``environ``, or single-process defaults when none is set.

    Raises PgoError when only some are set, or when RANK/WORLD_SIZE/LOCAL_RANK are not integers
    with 0 <= RANK < WORLD_SIZE.
    """
    present = [key for key in REQUIRED_ENV if key in environ]
    if not present:
        return {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(find_free_port()),
        }
    missing = [key for key in REQUIRED_ENV if key not in environ]
    if missing:
        raise PgoError(
            f"environment has {', '.join(present)} but not {', '.join(missing)}: a distributed "
            f"process needs all of {', '.join(REQUIRED_ENV)} (or none of them for a single process)"
        )
    env = {key: environ[key] for key in REQUIRED_ENV}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        if not env[key].isdigit():
            raise PgoError(f"environment variable {key}={env[key]!r} is not a non-negative integer")
    if int(env["RANK"]) >= int(env["WORLD_SIZE"]):
        raise PgoError(
            f"environment variable RANK={env['RANK']} is not below WORLD_SIZE={env['WORLD_SIZE']}"
        )
    return env


def disable_shm_comm_build() -> None:
    """Stop DeepSpeed from JIT-compiling its shared-memory comm op when its comm layer starts.

    ``deepspeed.comm.torch.TorchBackend.__init__`` calls the module-level ``build_shm_op()``,
    which on a machine without a prebuilt op compiles C++ for 60-90 s. Training never uses that
    op (it only speeds up intra-node CPU all-reduce of small tensors), so we replace the
    function by one that returns None, which DeepSpeed treats as "op not available".
    Must run before the first ``deepspeed.comm.init_distributed``; idempotent.
    """
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    ds_comm_torch.build_shm_op = _no_shm_op


def _no_shm_op() -> None:
    return None


def _threads_per_process(environ: Mapping[str, str]) -> int:
    """OMP threads per rank: OMP_NUM_THREADS if set, else the CPU count over LOCAL_WORLD_SIZE."""
    if environ.get("OMP_NUM_THREADS", "").isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return int(environ["OMP_NUM_THREADS"])
    local_world = environ.get("LOCAL_WORLD_SIZE", "1")
    local_world = int(local_world) if local_world.isdigit() and int(local_world) > 0 else 1
    return max(1, (os.cpu_count() or 1) // local_world)


def setup_distributed() -> DistEnv:
    """Start torch.distributed and DeepSpeed's comm layer from the environment; return where we are.

    Sets OMP/torch threads (without a limit every rank would use all cores: 4-20x slower),
    the CUDA device, disables the shm-op build, and initialises the process group through
    ``deepspeed.comm.init_distributed`` so that DeepSpeed and torch share one group.
    Calling it again in a process that is already initialised returns the same DistEnv.
    """
    env = rendezvous_env(os.environ)
    os.environ.update(env)
    threads = _threads_per_process(os.environ)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)

    local_rank = int(env["LOCAL_RANK"])
    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")

    disable_shm_comm_build()
    import deepspeed.comm

    if not dist.is_initialized():
        deepspeed.comm.init_distributed(
            dist_backend=backend, auto_mpi_discovery=False, verbose=False
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    log.info(
        "rank %d of %d (local %d), %s on %s, %d threads",
        rank,
        world,
        local_rank,
        backend,
        device,
        threads,
    )
    return DistEnv(
        rank=rank, world_size=world, local_rank=local_rank, backend=backend, device=device
    )


def any_rank(flag: bool) -> bool:
    """True when `flag` is true on any rank (collective when there are several ranks)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def teardown_distributed() -> None:
    """Destroy the process group if one is up (ends gloo cleanly; without it 2-4% of exits abort)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
