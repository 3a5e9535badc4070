"""Modality balance: the contribution ratio rho and the modulation coefficient (Eq. 5-8)."""
