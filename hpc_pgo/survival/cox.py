"""Negative Cox partial log-likelihood (Breslow ties) in O(N log N), and its input check.

Conventions used throughout hpc_pgo:
- ``theta``: (N,) log hazard (log relative risk); higher = worse prognosis.
- ``time``: (N,) survival or censoring time, a finite number >= 0 (any unit, e.g. months).
- ``event``: (N,) 1 = death observed, 0 = censored (float, int or bool tensor).

The risk set of sample k is R(t_k) = {j : t_j >= t_k}. Samples tied at t_k are all in it
(Breslow's handling of ties).
"""

from __future__ import annotations

import torch

from hpc_pgo.errors import PgoError

__all__ = ["breslow_log_risk", "check_survival", "check_theta", "cox_nll"]

_REDUCTIONS = ("mean", "sum")


def _first_invalid(time: torch.Tensor, event: torch.Tensor) -> tuple[str, int, float] | None:
    """Return (what, index, value) of the first invalid time or event, or None if all are valid.

    Costs one device synchronisation (the final ``.item()``) when everything is valid.
    """
    bad_time = ~torch.isfinite(time) | (time < 0) if time.is_floating_point() else time < 0
    bad_event = (event != 0) & (event != 1)
    if not bool((bad_time.any() | bad_event.any()).item()):
        return None
    if bad_time.any():
        i = int(torch.nonzero(bad_time)[0, 0])
        return "time", i, float(time[i])
    i = int(torch.nonzero(bad_event)[0, 0])
    return "event", i, float(event[i])


def check_survival(time: torch.Tensor, event: torch.Tensor, where: str = "batch") -> None:
    """Raise PgoError unless ``time`` (N,) is finite and >= 0 and ``event`` (N,) is in {0, 1}.

    ``where`` names the source in the message (e.g. "batch", a file name). Cheap enough for
    every training step: elementwise comparisons and one synchronisation.
    """
    if time.dim() != 1 or event.shape != time.shape:
        raise PgoError(
            f"{where}: time has shape {tuple(time.shape)} and event {tuple(event.shape)}; "
            "valid: two 1-D tensors of the same length N"
        )
    if event.dtype == torch.bool:
        event = event.to(torch.uint8)
    found = _first_invalid(time, event)
    if found is None:
        return
    what, i, value = found
    valid = "a finite number >= 0" if what == "time" else "0 (censored) or 1 (death observed)"
    label = "survival time" if what == "time" else "event"
    raise PgoError(f"{where}: {label} {value!r} at index {i} is invalid; valid: {valid}")


def check_theta(theta: torch.Tensor, time: torch.Tensor, name: str = "theta") -> None:
    """Raise PgoError unless ``theta`` is a floating-point (N,) tensor matching ``time`` (N,).

    Shapes and dtype only (no synchronisation); ``name`` names the tensor in the message.
    """
    if theta.dim() != 1 or theta.shape != time.shape:
        raise PgoError(
            f"{name} has shape {tuple(theta.shape)} but time has {tuple(time.shape)}; "
            f"valid: a 1-D tensor (N,) of log hazards, one per sample (squeeze a (N, 1) head output)"
        )
    if not theta.is_floating_point():
        raise PgoError(f"{name} has dtype {theta.dtype}; valid: a floating-point tensor")


def breslow_log_risk(theta: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """Log of the Breslow risk-set sum for every sample, in the input order.

        out_i = log sum_{j : t_j >= t_i} exp(theta_j)        (shape (N,), dtype of theta)

    Computed without an N x N matrix: sort by time descending, ``logcumsumexp`` along the
    sorted order, then give every sample the value at the LAST position of its tie group,
    so that the sum includes every sample tied with it. O(N log N) time, O(N) memory,
    differentiable with respect to ``theta``; no synchronisation with the device.
    """
    n = time.shape[0]
    t_sorted, order = torch.sort(time, descending=True, stable=True)
    log_cum = torch.logcumsumexp(theta[order], dim=0)
    # Last index of each tie group: position i is a group end if the next time differs.
    # For each i, the first group end at or after i is a reversed running minimum.
    positions = torch.arange(n, device=time.device)
    is_end = torch.ones(n, dtype=torch.bool, device=time.device)
    is_end[:-1] = t_sorted[:-1] != t_sorted[1:]
    end_of_group = torch.where(is_end, positions, torch.full_like(positions, n))
    end_of_group = torch.flip(torch.cummin(torch.flip(end_of_group, [0]), dim=0).values, [0])
    # Back to the input order: inverse[order[i]] = i.
    inverse = torch.empty_like(order).scatter_(0, order, positions)
    return log_cum[end_of_group][inverse]


def cox_nll(
    theta: torch.Tensor, time: torch.Tensor, event: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow ties (the paper's Eq. 2, negated).

        loss_sum  = - sum_{k : event_k = 1} ( theta_k - log sum_{j : t_j >= t_k} exp(theta_j) )
        loss_mean = loss_sum / (number of events)

    theta: (N,) log hazard, higher = worse (float32/float64, any device, autograd flows).
    time: (N,) times >= 0; event: (N,) 1 = death observed, 0 = censored (float/int/bool).
    reduction: "mean" (divide by the number of events) or "sum".

    A batch without any event has no term: the loss is 0 with a zero gradient (never NaN).
    The value is invariant to adding a constant to theta. No state is kept between calls, so
    it can be applied to a batch gathered from all ranks. Raises PgoError on a negative, NaN
    or infinite time, an event outside {0, 1}, mismatched shapes or an unknown reduction.
    """
    if reduction not in _REDUCTIONS:
        raise PgoError(f"reduction {reduction!r} is unknown; valid: {', '.join(_REDUCTIONS)}")
    check_theta(theta, time)
    check_survival(time, event)
    observed = event.to(torch.bool)
    # where() rather than event * (...): a censored term never enters the sum, even if inf.
    terms = torch.where(observed, theta - breslow_log_risk(theta, time), theta.new_zeros(()))
    loss = 0.0 - terms.sum()  # +0.0 (not -0.0) for a batch without events
    if reduction == "mean":
        loss = loss / observed.sum().clamp(min=1).to(theta.dtype)
    return loss
