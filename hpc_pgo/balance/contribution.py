"""Contribution ratio rho and modulation coefficient k of the two modalities (paper Eq. 5-8).

The head is theta = W^G.G + W^P.P + b (Eq. 1). Per modality m in {G, P} the caller passes
theta^m = W^m.m + b/2, so theta = theta^G + theta^P. For every uncensored sample k,

    s^m_k = exp(theta^m_k) / sum_{j in R(t_k)} exp(theta^m_j)          R(t_k) = {j : t_j >= t_k}

(Eq. 5 as printed omits the exp in the numerator; we read that as a typo, see DESIGN.md).
The risk sets are the Breslow ones of the Cox loss (tied samples are in each other's sets).

    s^m   = sum_{k : event_k = 1} s^m_k
    rho^G = s^G / s^P,   rho^P = 1 / rho^G                                      (Eq. 5, 6)
    k^m   = min(1 - tanh(alpha * (rho^m - 1)), 1)                               (Eq. 7, 8)

k^m scales the update of modality m's parameters. It is 1 for rho^m <= 1 and in (0, 1) for
rho^m > 1, so only the dominant modality is slowed (alpha = 1 is the paper's choice).
Each s^m_k is invariant to adding a constant to theta^m, so the b/2 does not change rho.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.cox import breslow_log_risk, check_survival, check_theta

__all__ = ["Modulation", "coefficient", "log_contribution", "modulation", "rho"]

# exp(700) is finite in float64 (the limit is ~709.78): rho and 1/rho both stay finite.
_MAX_ABS_LOG_RHO = 700.0


def log_contribution(
    theta_m: torch.Tensor, time: torch.Tensor, event: torch.Tensor
) -> torch.Tensor:
    """log s^m = logsumexp_{k : event_k = 1} (theta^m_k - log sum_{j in R(t_k)} exp(theta^m_j)).

    theta_m: (N,) one modality's part of the log hazard; time: (N,); event: (N,) 1 = death.
    Returns a 0-d tensor in theta_m's dtype; -inf when there is no event. Computed in log
    space, so it is finite for any finite theta_m (e.g. |theta_m| = 50). No input checks.
    """
    terms = theta_m - breslow_log_risk(theta_m, time)
    terms = torch.where(event.to(torch.bool), terms, terms.new_full((), -math.inf))
    return torch.logsumexp(terms, dim=0)


def rho(
    theta_g: torch.Tensor, theta_p: torch.Tensor, time: torch.Tensor, event: torch.Tensor
) -> tuple[float, float]:
    """Contribution ratios (rho^G, rho^P) of Eq. 5-6 on one (global) batch, as Python floats.

    theta_g, theta_p: (N,) per-modality log hazards W^G.G + b/2 and W^P.P + b/2 (any float
    dtype and device; no gradient is taken). time: (N,) >= 0; event: (N,) 1 = death observed.
    rho^G = exp(log s^G - log s^P) in float64, rho^P = 1 / rho^G, so rho^G * rho^P = 1.
    |log rho| is clipped at 700 so both are finite floats. A batch with no event carries no
    information about either modality: the result is (1.0, 1.0), i.e. coefficients 1.
    One device synchronisation for the input check, one for the result.
    """
    check_theta(theta_g, time, name="theta_g")
    check_theta(theta_p, time, name="theta_p")
    check_survival(time, event)
    with torch.no_grad():
        log_s_g = log_contribution(theta_g.to(torch.float64), time, event)
        log_s_p = log_contribution(theta_p.to(torch.float64), time, event)
        n_events = event.to(torch.bool).sum().to(torch.float64)
        n_events, log_rho_g = torch.stack([n_events, log_s_g - log_s_p]).tolist()
    if n_events == 0:
        return 1.0, 1.0
    log_rho_g = min(max(log_rho_g, -_MAX_ABS_LOG_RHO), _MAX_ABS_LOG_RHO)
    return math.exp(log_rho_g), math.exp(-log_rho_g)


def coefficient(rho_m: float, alpha: float = 1.0) -> float:
    """Modulation coefficient k^m = min(1 - tanh(alpha * (rho^m - 1)), 1) of Eq. 7-8.

    rho_m: a contribution ratio > 0 (float or 0-d tensor); alpha >= 0 (0 disables the
    modulation, alpha = 1 is the paper). k is 1 for rho_m <= 1 and in (0, 1) for rho_m > 1;
    in floating point it reaches 0.0 once alpha * (rho_m - 1) exceeds about 19.
    """
    rho_m, alpha = float(rho_m), float(alpha)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise PgoError(f"balance alpha {alpha!r} is invalid; valid: a finite number >= 0")
    if not (math.isfinite(rho_m) and rho_m > 0):
        raise PgoError(f"contribution ratio rho {rho_m!r} is invalid; valid: a finite number > 0")
    return min(1.0 - math.tanh(alpha * (rho_m - 1.0)), 1.0)


class Modulation(NamedTuple):
    """The per-step balance values that the engine applies and logs."""

    rho_g: float
    rho_p: float
    k_g: float
    k_p: float


def modulation(
    theta_g: torch.Tensor,
    theta_p: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    alpha: float = 1.0,
) -> Modulation:
    """``rho`` then ``coefficient`` for both modalities: (rho^G, rho^P, k^G, k^P) as floats."""
    rho_g, rho_p = rho(theta_g, theta_p, time, event)
    return Modulation(rho_g, rho_p, coefficient(rho_g, alpha), coefficient(rho_p, alpha))
