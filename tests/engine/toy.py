"""A tiny two-branch survival model with the hpc_pgo.models contract, and a fixed batch, for engine tests.

forward(batch) -> {"theta": (B,), "theta_g": (B,), "theta_p": (B,)} with theta = theta_g + theta_p
and theta_m = W^m.m + b/2; param_groups() -> {"genomic", "image", "head"} without frozen parts.
"""

from __future__ import annotations

import torch
from torch import nn

N_OMIC, N_IMAGE, HIDDEN = 8, 12, 6


class TwoBranch(nn.Module):
    """Genomic branch (a frozen 'RNA' projection + a trainable layer), image branch, split head."""

    supports_balance = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.rna = nn.Linear(N_OMIC, N_OMIC)  # frozen, like scGPT + MLP-A
        self.rna.requires_grad_(False)
        self.genomic = nn.Sequential(nn.Linear(N_OMIC, HIDDEN), nn.Tanh())
        self.image = nn.Sequential(nn.Linear(N_IMAGE, HIDDEN), nn.Tanh())
        self.w_g = nn.Linear(HIDDEN, 1, bias=False)
        self.w_p = nn.Linear(HIDDEN, 1, bias=False)
        # The head bias b is a buffer here, not a parameter: the Cox loss does not depend on a
        # constant shift of theta, so d loss / d b is 0 up to rounding, and Adam (invariant to
        # gradient scale) would turn that rounding noise into full-size updates that differ
        # between 1 and 2 ranks.
        self.register_buffer("b", torch.tensor([0.5]))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, batch: dict) -> dict:
        g = self.genomic(self.rna(batch["omic"]))
        p = self.image(batch["image"])
        theta_g = self.w_g(g).squeeze(-1) + self.b / 2
        theta_p = self.w_p(p).squeeze(-1) + self.b / 2
        return {"theta": theta_g + theta_p, "theta_g": theta_g, "theta_p": theta_p}

    def param_groups(self) -> dict:
        return {
            "genomic": list(self.genomic.parameters()),
            "image": list(self.image.parameters()),
            "head": [self.w_g.weight, self.w_p.weight],
        }


def make_batch(n: int = 16, seed: int = 0, events: bool = True) -> dict:
    """n patients whose early deaths have high omic feature 0 (the genomic branch can dominate)."""
    gen = torch.Generator().manual_seed(seed)
    omic = torch.randn(n, N_OMIC, generator=gen)
    image = torch.randn(n, N_IMAGE, generator=gen)
    time = torch.exp(-omic[:, 0] + 0.3 * torch.randn(n, generator=gen)) * 10
    time = torch.round(time * 4) / 4  # quarter-month resolution: some tied times
    event = (torch.rand(n, generator=gen) < 0.7).float() if events else torch.zeros(n)
    return {"omic": omic, "image": image, "time": time, "event": event}


def rank_slice(batch: dict, rank: int, sizes: list[int]) -> dict:
    """Rank `rank`'s contiguous slice when the ranks hold `sizes` samples (in rank order)."""
    start = sum(sizes[:rank])
    return {k: v[start : start + sizes[rank]] for k, v in batch.items()}
