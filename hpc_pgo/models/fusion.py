"""Fusion heads: modality features -> theta, the log hazard (higher = worse), shape (B,).

Each head takes {"genomic": G (B, d_G), "image": P (B, d_P)} (or one of them) and returns a dict
with "theta"; the concat head with both modalities also returns the per-modality parts.

    concat      theta = W [G || P] + b = W^G G + W^P P + b   (paper Eq. 1; one Linear, weight (1, d_G + d_P)
                read as the blocks W^G = W[:, :d_G], W^P = W[:, d_G:]).
                theta_g = W^G G + b/2, theta_p = W^P P + b/2 (the per-modality theta^m of Eq. 5);
                theta is computed as theta_g + theta_p, so the identity holds exactly.
                With one modality: theta = W m + b only.
    kronecker   Pathomic Fusion's gated bilinear fusion (Chen et al. 2020). It mixes the modalities
                before the Cox head, so there is no per-modality theta: the rho balance of Eq. 5-8
                cannot be computed (supports_balance is False) and needs both modalities.

`supports_balance` tells the engine whether balance.mode=rho can run on the head's output.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hpc_pgo.config import registry
from hpc_pgo.errors import PgoError

__all__ = ["ConcatFusion", "KroneckerFusion", "FUSIONS", "THETA_KEYS"]

# The key of each modality's theta^m in the head's output.
THETA_KEYS = {"genomic": "theta_g", "image": "theta_p"}


class ConcatFusion(nn.Module):
    """Linear Cox head on [G || P]; its weight blocks give theta_g and theta_p (see module docstring)."""

    def __init__(self, dims: Mapping[str, int], cfg: Mapping | None = None):
        super().__init__()
        self.modalities = list(dims)
        self.linear = nn.Linear(sum(dims.values()), 1)
        offsets = [0]
        for m in self.modalities:
            offsets.append(offsets[-1] + dims[m])
        self._columns = {
            m: (a, b) for m, a, b in zip(self.modalities, offsets, offsets[1:], strict=False)
        }

    @property
    def supports_balance(self) -> bool:
        return len(self.modalities) == 2

    def weight_block(self, modality: str) -> torch.Tensor:
        """W^m, the columns of the head weight that multiply modality m's features: (1, d_m), a view."""
        start, stop = self._columns[modality]
        return self.linear.weight[:, start:stop]

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(self.modalities) == 1:
            return {"theta": self.linear(features[self.modalities[0]]).squeeze(-1)}
        half_bias = self.linear.bias / 2
        out = {
            THETA_KEYS[m]: (F.linear(features[m], self.weight_block(m)) + half_bias).squeeze(-1)
            for m in self.modalities
        }
        out["theta"] = out["theta_g"] + out["theta_p"]
        return out


class GatedUnimodal(nn.Module):
    """Pathomic Fusion's gate for one modality m (width d), conditioned on both G and P.

    h = ReLU(W_h m); z = sigmoid(Bilinear(G, P)) (B, d), the attention on h;
    o = Dropout(ReLU(W_o (z * h))) (B, d).
    """

    def __init__(self, dim: int, dim_g: int, dim_p: int, dropout: float):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.gate = nn.Bilinear(dim_g, dim_p, dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, m: torch.Tensor, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.out(torch.sigmoid(self.gate(g, p)) * self.hidden(m))


def _append_one(x: torch.Tensor) -> torch.Tensor:
    """(B, d) -> (B, d + 1) with a last column of ones, so the outer product keeps unimodal terms."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


class KroneckerFusion(nn.Module):
    """Gated bilinear (Kronecker) fusion, Pathomic Fusion style, then a linear Cox head.

    o_G (B, d_G), o_P (B, d_P) from the gates; k = vec([o_G, 1] outer [o_P, 1]) (B, (d_G+1)(d_P+1));
    e = Dropout(ReLU(W_1 Dropout(k))) (B, hidden); with skip: e = Dropout(ReLU(W_2 [e || o_G,1 || o_P,1]))
    (B, hidden); theta = w e + b.  cfg: hidden (64), dropout (0.25), skip (True).
    """

    supports_balance = False

    def __init__(self, dims: Mapping[str, int], cfg: Mapping):
        super().__init__()
        if sorted(dims) != ["genomic", "image"]:
            raise PgoError(
                f"model.fusion=kronecker needs modalities [genomic, image]; got [{', '.join(dims)}]; "
                "valid for one modality: model.fusion=concat"
            )
        dim_g, dim_p = dims["genomic"], dims["image"]
        hidden, dropout, self.skip = cfg["hidden"], cfg["dropout"], cfg["skip"]
        self.gate_g = GatedUnimodal(dim_g, dim_g, dim_p, dropout)
        self.gate_p = GatedUnimodal(dim_p, dim_g, dim_p, dropout)
        self.post_fusion_dropout = nn.Dropout(dropout)
        self.encoder1 = nn.Sequential(
            nn.Linear((dim_g + 1) * (dim_p + 1), hidden), nn.ReLU(), nn.Dropout(dropout)
        )
        skip_dim = dim_g + dim_p + 2 if self.skip else 0
        self.encoder2 = nn.Sequential(
            nn.Linear(hidden + skip_dim, hidden), nn.ReLU(), nn.Dropout(dropout)
        )
        self.cox = nn.Linear(hidden, 1)

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g, p = features["genomic"], features["image"]
        o_g = _append_one(self.gate_g(g, g, p))
        o_p = _append_one(self.gate_p(p, g, p))
        kron = torch.einsum("bi,bj->bij", o_g, o_p).flatten(start_dim=1)
        fused = self.encoder1(self.post_fusion_dropout(kron))
        if self.skip:
            fused = torch.cat([fused, o_g, o_p], dim=1)
        return {"theta": self.cox(self.encoder2(fused)).squeeze(-1)}


# name -> head class, built as cls(dims, fusion cfg); the names are hpc_pgo.config.registry's
FUSIONS: dict[str, type[nn.Module]] = registry.FUSIONS.bind(
    {"concat": ConcatFusion, "kronecker": KroneckerFusion}
)
