"""Modality balance: the contribution ratio rho and the modulation coefficient (Eq. 5-8).

Pure functions on the (global) batch, in ``hpc_pgo.balance.contribution``:
``rho(theta_g, theta_p, time, event) -> (rho_g, rho_p)``, ``coefficient(rho, alpha)``,
``modulation(...) -> Modulation(rho_g, rho_p, k_g, k_p)`` and ``log_contribution``.
"""

from hpc_pgo.balance.contribution import (
    Modulation,
    coefficient,
    log_contribution,
    modulation,
    rho,
)

__all__ = ["Modulation", "coefficient", "log_contribution", "modulation", "rho"]
