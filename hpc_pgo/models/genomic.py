"""The genomic branch: SNN for CNV + mutations, an RNA encoder, and MLP-B giving G.

    G1 = SNN([cnv || mut])                 (B, snn.hidden[-1])
    G2 = rna_encoder(batch)                 (B, d_rna) or nothing when rna_encoder = none
    G  = MLP_B([G1 || G2])                  (B, mlp_b.out)

RNA encoders (model.genomic.rna_encoder), the rows of the paper's ablation (Table 3):
    snn         RNA values through their own SNN (widths model.genomic.rna_snn): Exp. 1
    scgpt       a precomputed scGPT embedding read from the batch, as is ("w/o smooth"): Exp. 2-3
    scgpt_mlpa  that embedding through the frozen, mix-up pretrained MLP-A ("w/ smooth"): Exp. 4-6
    none        no RNA input

The RNA SNN's front end (rna_encoder=snn), in this order, each off by default:
    rna_input_dropout p   Dropout(p) on the RNA values (whole genes zeroed in training)
    rna_pcs k             the values projected on the first k principal components of the fold's
                          TRAIN patients, whitened (RnaProjection; fitted by the fold loop through
                          GenomicEncoder.fit_rna_projection, never on validation or test patients)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from hpc_pgo.config import registry
from hpc_pgo.errors import PgoError
from hpc_pgo.models.weights import one_line, read_state_dict

__all__ = [
    "SNN",
    "RnaProjection",
    "MLP",
    "GenomicEncoder",
    "FrozenMLPA",
    "RNA_ENCODERS",
    "load_mlp_weights",
    "mlp_from_cfg",
]


class SNN(nn.Module):
    """Self-normalizing network as Pathomic Fusion builds it (Klambauer et al. 2017).

    Blocks Linear -> ELU -> AlphaDropout(p) with widths in_dim -> hidden[0] -> ... -> hidden[-1]
    (default 64-48-32-32). Every Linear starts with weight ~ N(0, std = 1/sqrt(fan_in)) and bias 0.
    Parameters: sum over blocks of (fan_in + 1) * fan_out; with the default widths
    64 * in_dim + 5808. x (B, in_dim) -> (B, hidden[-1]).
    """

    def __init__(
        self, in_dim: int, hidden: Sequence[int] = (64, 48, 32, 32), dropout: float = 0.25
    ):
        super().__init__()
        widths = [in_dim, *hidden]
        self.net = nn.Sequential(
            *(
                nn.Sequential(nn.Linear(a, b), nn.ELU(), nn.AlphaDropout(dropout))
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        self.out_dim = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(module.in_features))
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLP(nn.Module):
    """Perceptron of `layers` Linear layers: in_dim -> hidden -> ... -> hidden -> out_dim.

    ReLU and Dropout(p) between layers, none after the last (a linear read-out, as the Cox head
    or MLP-A's cell-type classifier follows). MLP-A and MLP-B are layers=3, hidden=128 (paper,
    Sec. 3.1). x (B, in_dim) -> (B, out_dim).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int = 128,
        out_dim: int = 128,
        layers: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if layers < 1:
            raise PgoError(f"MLP layers={layers} is not valid; valid: an integer >= 1")
        widths = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*blocks[:-2])  # no activation/dropout after the read-out
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_from_cfg(in_dim: int, cfg: Mapping) -> MLP:
    """MLP from a config block {hidden, layers, out, dropout} (model.genomic.mlp_a / mlp_b)."""
    return MLP(in_dim, cfg["hidden"], cfg["out"], cfg["layers"], cfg["dropout"])


def load_mlp_weights(mlp: MLP, path: str | Path, key: str) -> None:
    """Load a state dict of `mlp` (torch.save(mlp.state_dict(), path)), strictly: every tensor, same shapes.

    Raises PgoError naming the config key `key` and the file when it is missing, unreadable or
    does not fit.
    """
    state = read_state_dict(path, key)
    try:
        mlp.load_state_dict(state, strict=True)
    except RuntimeError as err:
        n_layers = sum(isinstance(m, nn.Linear) for m in mlp.net)
        raise PgoError(
            f"{key}={str(path)!r} does not fit an MLP {mlp.in_dim}->{mlp.out_dim} with "
            f"{n_layers} layers: {one_line(err)}"
        ) from err


class FrozenMLPA(nn.Module):
    """MLP-A with its pretrained weights, never trained here: requires_grad False, always in eval mode."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.mlp = mlp.requires_grad_(False).eval()
        self.out_dim = mlp.out_dim

    def train(self, mode: bool = True) -> FrozenMLPA:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.mlp(x)


class RnaProjection(nn.Module):
    """x (B, F) -> (B, k): whitened principal components z = (x - mean) V_k / s_k * sqrt(n - 1).

    mean (F,), V_k (F, k) and s_k (k,) come from the SVD of the centred (n, F) matrix of the
    training patients (one row per patient), so that each component has unit variance over them
    (the SNN expects unit-scale inputs). They are buffers: saved with the model and its
    checkpoints, never trained. Until fit() is called they are zero and forward raises PgoError.
    k = min(pcs, n - 1, F) after fit (a component beyond the data's rank carries nothing).
    """

    def __init__(self, in_dim: int, pcs: int):
        super().__init__()
        self.in_dim, self.pcs = in_dim, pcs
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("basis", torch.zeros(in_dim, pcs))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.out_dim = pcs

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Fit on x (n, in_dim): the training patients' values, one row per patient, n >= 2."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.in_dim or x.shape[0] < 2:
            raise PgoError(
                f"RNA projection: fit needs (n >= 2, {self.in_dim}) values, got {tuple(x.shape)}"
            )
        mean = x.mean(0)
        _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(self.pcs, int((s > 1e-8 * s[0]).sum()))
        scale = torch.zeros(self.pcs, dtype=torch.float64)
        scale[:k] = (x.shape[0] - 1) ** 0.5 / s[:k]
        basis = torch.zeros(self.in_dim, self.pcs, dtype=torch.float64)
        basis[:, :k] = vt[:k].T * scale[:k]
        self.mean.copy_(mean)
        self.basis.copy_(basis)
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise PgoError(
                "model.genomic.rna_pcs > 0 but the RNA projection was never fitted; valid: "
                "GenomicEncoder.fit_rna_projection(training patients' RNA) before use"
            )
        return (x - self.mean.to(x.dtype)) @ self.basis.to(x.dtype)


class RnaInput(nn.Module):
    """One RNA encoder applied to one batch field: (B, d_field) -> (B, out_dim)."""

    def __init__(self, field: str, config_key: str, encoder: nn.Module, out_dim: int):
        super().__init__()
        self.field, self.config_key = field, config_key
        self.encoder, self.out_dim = encoder, out_dim

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch[self.field])


def _field_dim(feature_dims: Mapping[str, int], field: str, why: str) -> int:
    if field not in feature_dims:
        raise PgoError(
            f"the shard set lacks field {field!r} needed by the genomic modality ({why}); "
            f"fields with a width: {', '.join(sorted(feature_dims)) or 'none'}"
        )
    return int(feature_dims[field])


def _rna_snn(cfg: Mapping, feature_dims: Mapping[str, int]) -> RnaInput:
    """[Dropout(rna_input_dropout)] -> [RnaProjection(rna_pcs)] -> SNN(rna_snn) on the RNA values."""
    field = cfg["rna_group"]
    width = _field_dim(feature_dims, field, "model.genomic.rna_encoder=snn")
    stages: list[nn.Module] = []
    if cfg["rna_input_dropout"] > 0:
        stages.append(nn.Dropout(cfg["rna_input_dropout"]))
    if cfg["rna_pcs"] > 0:
        stages.append(RnaProjection(width, cfg["rna_pcs"]))
        width = cfg["rna_pcs"]
    snn = SNN(width, **cfg["rna_snn"])
    encoder = nn.Sequential(*stages, snn) if stages else snn
    return RnaInput(field, "model.genomic.rna_group", encoder, snn.out_dim)


def _rna_scgpt(cfg: Mapping, feature_dims: Mapping[str, int]) -> RnaInput:
    field = cfg["rna_embedding_field"]
    width = _field_dim(feature_dims, field, "model.genomic.rna_encoder=scgpt")
    return RnaInput(field, "model.genomic.rna_embedding_field", nn.Identity(), width)


def _rna_scgpt_mlpa(cfg: Mapping, feature_dims: Mapping[str, int]) -> RnaInput:
    field = cfg["rna_embedding_field"]
    width = _field_dim(feature_dims, field, "model.genomic.rna_encoder=scgpt_mlpa")
    weights = cfg["mlp_a_weights"]
    if weights is None:
        raise PgoError(
            "model.genomic.rna_encoder=scgpt_mlpa needs model.genomic.mlp_a_weights "
            "(the MLP-A state dict from launch/pretrain.py); it is null"
        )
    mlp_a = mlp_from_cfg(width, cfg["mlp_a"])
    load_mlp_weights(mlp_a, weights, "model.genomic.mlp_a_weights")
    return RnaInput(field, "model.genomic.rna_embedding_field", FrozenMLPA(mlp_a), mlp_a.out_dim)


# name -> builder(genomic cfg, feature_dims) -> RnaInput, or None for no RNA input; the names
# are hpc_pgo.config.registry's
RNA_ENCODERS: dict[str, Callable[[Mapping, Mapping[str, int]], RnaInput] | None] = (
    registry.RNA_ENCODERS.bind(
        {"snn": _rna_snn, "scgpt": _rna_scgpt, "scgpt_mlpa": _rna_scgpt_mlpa, "none": None}
    )
)


class GenomicEncoder(nn.Module):
    """batch -> G (B, mlp_b.out): MLP_B([SNN(cat of the omics groups) || rna_encoder(batch)])."""

    def __init__(self, cfg: Mapping, feature_dims: Mapping[str, int]):
        super().__init__()
        self.groups = list(cfg["groups"])
        name = cfg["rna_encoder"]
        if name not in RNA_ENCODERS:
            raise PgoError(
                f"model.genomic.rna_encoder={name!r} is unknown; valid: {', '.join(RNA_ENCODERS)}"
            )
        if not self.groups and RNA_ENCODERS[name] is None:
            raise PgoError(
                "the genomic modality has no input: model.genomic.groups is empty and "
                "model.genomic.rna_encoder=none; name omics groups (e.g. [cnv, mut]) or an RNA encoder"
            )
        widths = [_field_dim(feature_dims, g, "model.genomic.groups") for g in self.groups]
        self.snn = SNN(sum(widths), **cfg["snn"]) if self.groups else None
        builder = RNA_ENCODERS[name]
        self.rna = builder(cfg, feature_dims) if builder is not None else None
        in_dim = (self.snn.out_dim if self.snn else 0) + (self.rna.out_dim if self.rna else 0)
        self.mlp_b = mlp_from_cfg(in_dim, cfg["mlp_b"])
        self.out_dim = self.mlp_b.out_dim

    @property
    def rna_projection(self) -> RnaProjection | None:
        """The RNA SNN's PCA front end (model.genomic.rna_pcs > 0), or None."""
        if self.rna is None:
            return None
        return next((m for m in self.rna.modules() if isinstance(m, RnaProjection)), None)

    def fit_rna_projection(self, values: torch.Tensor) -> None:
        """Fit the RNA front end's principal components on the training patients' RNA values
        (n, F), one row per patient, as the loader serves them (z-scored). Only on training
        patients: the fold loop calls it; a no-op without rna_pcs."""
        if self.rna_projection is not None:
            self.rna_projection.fit(values)

    @property
    def fields(self) -> dict[str, str]:
        """Batch keys this branch reads -> the config key that names each."""
        fields = dict.fromkeys(self.groups, "model.genomic.groups")
        if self.rna is not None:
            fields[self.rna.field] = self.rna.config_key
        return fields

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.snn is not None:
            parts.append(self.snn(torch.cat([batch[g] for g in self.groups], dim=1)))
        if self.rna is not None:
            parts.append(self.rna(batch))
        return self.mlp_b(torch.cat(parts, dim=1))
