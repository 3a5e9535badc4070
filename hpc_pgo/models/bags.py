"""Image encoders over a patient's bag of frozen tile features (multiple-instance learning).

A bag is the feature vectors of one patient's tiles (the side-car of `pgo-shards embed-tiles`,
hpc_pgo.data.tile_features), served padded by the bag loader (hpc_pgo.data.bags)::

    batch[field]            float32 (B, N, D)   N = the largest bag of the batch, rows zero-padded
    batch[field + "_mask"]  bool (B, N)         True = a tile of the bag, False = padding

Both pools first map each tile through CLAM's fc, h_i = Dropout(ReLU(W_1 x_i + b_1)) (hidden),
then pool the valid tiles of the bag and project, P = Linear(z) (model.image.out; z as it is
when null):

- ``MeanPoolBag`` (mean):     z = (1 / n) sum_i h_i over the n valid tiles.
- ``GatedAttentionBag`` (abmil), Ilse, Tomczak & Welling 2018, Eq. 9 (gated attention):
      a_i = exp(w^T (tanh(V h_i) * sigmoid(U h_i))) / sum_j exp(w^T (tanh(V h_j) * sigmoid(U h_j)))
      z   = sum_i a_i h_i
  the softmax over the bag's valid tiles only; forward returns {"features": P, "attention":
  a (B, N)}, a = 0 on padding, sum 1 over each bag's tiles (SurvivalModel passes "attention"
  through to the model's outputs: the heatmap weights of attention.csv).

Padding never changes P: padded rows are zeroed after the fc and get attention exactly 0 (a
logit of finfo.min). An empty bag (a patient whose image is unavailable under --missing mask)
pools to z = 0 (attention all 0), so P = the projection's bias: no information, like a masked
omics group's 0. IMAGE_ENCODERS binds model.image.encoder's names (hpc_pgo.config.registry) to
their builders; "backbone" is hpc_pgo.models.image.ImageEncoder.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hpc_pgo.config import registry
from hpc_pgo.errors import PgoError
from hpc_pgo.models.image import ImageEncoder

__all__ = ["IMAGE_ENCODERS", "GatedAttentionBag", "MeanPoolBag", "mask_field"]


def mask_field(field: str) -> str:
    """The batch key of the padding mask of bag field `field`."""
    return f"{field}_mask"


class _Bag(nn.Module):
    """What both pools share: the tile MLP (CLAM's fc), the projection to P, the batch fields."""

    def __init__(self, cfg: Mapping, feature_dims: Mapping[str, int]):
        super().__init__()
        bag = cfg["bag"]
        self.field = bag["field"]
        if self.field not in feature_dims:
            have = ", ".join(sorted(feature_dims)) or "none"
            raise PgoError(
                f"model.image.bag.field={self.field!r}: the shard set has no such feature field "
                f"(run `pgo-shards embed-tiles`); fields: {have}"
            )
        hidden = bag["hidden"]
        self.fc = nn.Sequential(
            nn.Linear(int(feature_dims[self.field]), hidden), nn.ReLU(), nn.Dropout(bag["dropout"])
        )
        out = cfg["out"]
        self.proj = nn.Linear(hidden, out) if out is not None else nn.Identity()
        self.out_dim = out if out is not None else hidden

    @property
    def fields(self) -> dict[str, str]:
        """Batch keys this branch reads -> the config key that names each (the mask rides along)."""
        return {self.field: "model.image.bag.field"}

    def tiles(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(h (B, N, hidden) with padded rows 0, mask (B, N) bool) of the batch's bags."""
        x = batch[self.field]
        mask = batch[mask_field(self.field)].to(device=x.device, dtype=torch.bool)
        if x.dim() != 3 or tuple(mask.shape) != tuple(x.shape[:2]):
            raise PgoError(
                f"batch field {self.field!r} has shape {tuple(x.shape)} with mask "
                f"{tuple(mask.shape)}; expected (B, N, D) and (B, N)"
            )
        h = self.fc(x) * mask.unsqueeze(-1).to(x.dtype)
        return h, mask


class MeanPoolBag(_Bag):
    """bag (B, N, D) + mask (B, N) -> P (B, out): the mean of fc(x_i) over the valid tiles."""

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h, mask = self.tiles(batch)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
        return self.proj(h.sum(dim=1) / count)


class GatedAttentionBag(_Bag):
    """bag (B, N, D) + mask (B, N) -> {"features": P (B, out), "attention": a (B, N)}."""

    def __init__(self, cfg: Mapping, feature_dims: Mapping[str, int]):
        super().__init__(cfg, feature_dims)
        hidden, width = cfg["bag"]["hidden"], cfg["bag"]["attention"]
        self.attention_v = nn.Linear(hidden, width)
        self.attention_u = nn.Linear(hidden, width)
        self.attention_w = nn.Linear(width, 1)

    def weights(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """a (B, N): the softmax of the gated scores over each bag's valid tiles, 0 on padding
        and for an empty bag. A finite fill (not -inf) keeps an empty bag's gradient finite."""
        gated = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        logits = self.attention_w(gated).squeeze(-1).float()
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=1) * mask

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h, mask = self.tiles(batch)
        a = self.weights(h, mask)
        z = torch.bmm(a.to(h.dtype).unsqueeze(1), h).squeeze(1)
        return {"features": self.proj(z), "attention": a}


# model.image.encoder -> builder(resolved model.image config, feature_dims, image_size)
IMAGE_ENCODERS = registry.IMAGE_ENCODERS.bind(
    {
        "backbone": lambda cfg, dims, size: ImageEncoder(cfg, size),
        "mean": lambda cfg, dims, size: MeanPoolBag(cfg, dims),
        "abmil": lambda cfg, dims, size: GatedAttentionBag(cfg, dims),
    }
)
