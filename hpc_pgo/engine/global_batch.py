"""Gather the per-rank slices of a batch into the GLOBAL batch, so the Cox loss sees all risk sets.

The Cox partial likelihood couples samples through the risk sets R(t_k), so a loss computed on
each rank's B/W samples is not the loss of the B-sample batch. We all-gather theta (with
autograd), time, event and the per-modality theta (without autograd) and compute the loss on
the concatenation, in rank order, on every rank.

Why the gradient is exact without any rescaling: every rank computes the same global loss L.
The backward of ``torch.distributed.nn.functional.all_gather`` sums the incoming gradients of
all W ranks (a reduce-scatter), so rank r receives W * dL/dtheta_r for its own slice. DeepSpeed
then averages parameter gradients over the W ranks (divides by W), which leaves
sum_r dL/dtheta_r * dtheta_r/dw: the gradient of one process holding all B samples.

Per-rank batch sizes may differ (the last batch of an epoch, a rank with fewer samples): sizes
are gathered first, slices padded to the largest and the padding cut off after the gather.

``micro_batch(B, W)`` is the one place the per-rank batch B / W is computed (the config rules'
deepspeed.train_micro_batch_size_per_gpu, the engine's DeepSpeed config, the fold's loader).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from hpc_pgo.errors import PgoError


def micro_batch(
    batch_size: int, world_size: int, *, ranks_from: str = "the world size of the fold's processes"
) -> int:
    """The per-rank batch of a global batch of `batch_size` over `world_size` ranks: B / W.

    Every rank takes the same share, since gradient accumulation is 1 (the Cox risk sets span
    one optimizer step's global batch), so W must divide B; otherwise PgoError, where
    `ranks_from` says where W came from (e.g. "cluster.nodes=1 x cluster.tasks_per_node=5").
    """
    if world_size < 1:
        raise PgoError(f"{world_size} ranks per fold ({ranks_from}); valid: 1 or more")
    if batch_size % world_size:
        raise PgoError(
            f"train.batch_size={batch_size} does not split over {world_size} ranks per fold "
            f"({ranks_from}); valid: a multiple of {world_size}"
        )
    return batch_size // world_size


@dataclass(frozen=True)
class GlobalBatch:
    """The global batch, identical on every rank (N = sum of per-rank sizes, in rank order).

    theta: (N,) log hazard, differentiable through this rank's slice;
    theta_g, theta_p: (N,) per-modality log hazard W^m·m + b/2, detached, or None when the model
    does not produce them; time: (N,) follow-up time; event: (N,) 1 = death observed, 0 = censored.
    """

    theta: torch.Tensor
    theta_g: torch.Tensor | None
    theta_p: torch.Tensor | None
    time: torch.Tensor
    event: torch.Tensor


def _check_shapes(theta: torch.Tensor, others: dict[str, torch.Tensor | None]) -> None:
    if theta.dim() != 1:
        raise PgoError(f"model output 'theta' has shape {tuple(theta.shape)}; expected (batch,)")
    for name, value in others.items():
        if value is not None and tuple(value.shape) != tuple(theta.shape):
            raise PgoError(
                f"batch/model field {name!r} has shape {tuple(value.shape)}; expected "
                f"{tuple(theta.shape)} like 'theta'"
            )


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """x (n,) followed by zeros up to (length,); differentiable in x."""
    if x.shape[0] == length:
        return x
    return torch.cat([x, x.new_zeros(length - x.shape[0])])


def _detach(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()


def gather_global_batch(
    theta: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    theta_g: torch.Tensor | None = None,
    theta_p: torch.Tensor | None = None,
) -> GlobalBatch:
    """All-gather this rank's slice of (theta, time, event, theta_g, theta_p) into the global batch.

    Without an initialised process group, or with one rank, returns the inputs (theta_g and
    theta_p detached). time keeps its dtype exactly (gathered as float64), event its dtype.
    Collective: every rank must call it in the same step.
    """
    _check_shapes(theta, {"time": time, "event": event, "theta_g": theta_g, "theta_p": theta_p})
    if (theta_g is None) != (theta_p is None):
        raise PgoError("model output has only one of 'theta_g', 'theta_p'; give both or neither")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return GlobalBatch(theta, _detach(theta_g), _detach(theta_p), time, event)

    world = dist.get_world_size()
    n_local = torch.tensor([theta.shape[0]], dtype=torch.int64, device=theta.device)
    sizes = [torch.empty_like(n_local) for _ in range(world)]
    dist.all_gather(sizes, n_local)
    sizes_int = [int(s.item()) for s in sizes]
    n_max = max(sizes_int)

    pieces = dist_fn.all_gather(_pad(theta, n_max))
    theta_all = torch.cat([piece[:n] for piece, n in zip(pieces, sizes_int, strict=True)])

    # One plain gather for everything that needs no gradient: rows time, event[, theta_g, theta_p].
    rows = [time, event] + [t.detach() for t in (theta_g, theta_p) if t is not None]
    side = torch.stack([_pad(r.to(device=theta.device, dtype=torch.float64), n_max) for r in rows])
    side_pieces = [torch.empty_like(side) for _ in range(world)]
    dist.all_gather(side_pieces, side)
    side_all = torch.cat([piece[:, :n] for piece, n in zip(side_pieces, sizes_int, strict=True)], 1)

    time_all = side_all[0].to(time.dtype)
    event_all = side_all[1].to(event.dtype)
    theta_g_all = side_all[2].to(theta.dtype) if theta_g is not None else None
    theta_p_all = side_all[3].to(theta.dtype) if theta_p is not None else None
    return GlobalBatch(theta_all, theta_g_all, theta_p_all, time_all, event_all)
