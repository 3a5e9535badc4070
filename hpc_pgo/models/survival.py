"""The survival model the engine trains: genomic and/or image branch, a fusion head, theta out.

build_model(model_cfg, feature_dims=..., image_size=...) reads the keys of configs/model/_base.yaml,
the base every model= choice is merged onto; its values are the defaults (DEFAULTS is read from
that file, the one place they are written, and its comments document each key). Any other key is
refused. The names a key may take come from the registries (hpc_pgo.config.registry):
model.modalities (MODALITIES), model.fusion (FUSIONS), model.genomic.rna_encoder (RNA_ENCODERS),
model.image.encoder (IMAGE_ENCODERS: backbone, or a MIL pool over tile-feature bags,
hpc_pgo.models.bags); model.image.arch is any timm architecture name (t2t_vit_* are registered
by hpc_pgo).

The batch the model reads: one float32 tensor per field, (B, n_features) for omics groups and the
embedding, (B, 3, H, W) for images, ImageNet-normalised as the loader serves them (the image
branch maps them to its backbone's own mean/std: hpc_pgo.models.image.backbone_stats), or, with
a bag encoder, (B, N, D) tile features with their (B, N) bool mask (hpc_pgo.data.bags).
feature_dims gives the width of every omics/embedding field the shard set holds (e.g. from the
manifest's groups, {"cnv": 80, "mut": 4, "rna": 240, "rna_emb": 512}).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpc_pgo.config import registry
from hpc_pgo.config.compose import GROUP_BASE_FILE, PACKAGE_CONFIGS, load_yaml
from hpc_pgo.errors import PgoError
from hpc_pgo.models.bags import IMAGE_ENCODERS
from hpc_pgo.models.fusion import FUSIONS
from hpc_pgo.models.genomic import GenomicEncoder

__all__ = ["DEFAULTS", "MODALITIES", "SurvivalModel", "build_model", "resolve_model_cfg"]

MODALITIES = registry.MODALITIES.names()

# Every key build_model reads, with its default: the model group's base file, as shipped beside
# the package (configs/model/_base.yaml), whatever configs directory a run composes from.
DEFAULTS: dict = OmegaConf.to_container(load_yaml(PACKAGE_CONFIGS / "model" / GROUP_BASE_FILE))


def _merge(defaults: Mapping, given: Mapping, where: str) -> dict:
    """defaults updated with given, recursively; a key not in defaults is an error naming it."""
    merged = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        if key not in defaults:
            raise PgoError(
                f"{where}.{key} is not a model config key; valid under {where}: {', '.join(defaults)}"
            )
        if isinstance(defaults[key], dict) and isinstance(value, Mapping):
            merged[key] = _merge(defaults[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_rate(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1


# config path -> (test, what is valid); names (fusion, encoders, arch) are checked by their registries
_VALUE_RULES = {
    "kronecker.hidden": (_is_count, "a positive integer"),
    "kronecker.dropout": (_is_rate, "a number in [0, 1)"),
    "genomic.snn.hidden": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(map(_is_count, v)),
        "a non-empty list of positive integers",
    ),
    "genomic.snn.dropout": (_is_rate, "a number in [0, 1)"),
    "genomic.rna_snn.hidden": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(map(_is_count, v)),
        "a non-empty list of positive integers",
    ),
    "genomic.rna_snn.dropout": (_is_rate, "a number in [0, 1)"),
    "genomic.rna_input_dropout": (_is_rate, "a number in [0, 1)"),
    "genomic.rna_pcs": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "an integer >= 0 (0 = no projection)",
    ),
    **{
        f"genomic.{mlp}.{key}": rule
        for mlp in ("mlp_a", "mlp_b")
        for key, rule in {
            "hidden": (_is_count, "a positive integer"),
            "layers": (_is_count, "a positive integer"),
            "out": (_is_count, "a positive integer"),
            "dropout": (_is_rate, "a number in [0, 1)"),
        }.items()
    },
    "genomic.groups": (
        lambda v: isinstance(v, list) and all(isinstance(g, str) for g in v),
        "a list of omics group names",
    ),
    **{
        path: (lambda v: isinstance(v, str) and v != "", "a non-empty string")
        for path in (
            "fusion",
            "genomic.rna_encoder",
            "genomic.rna_group",
            "genomic.rna_embedding_field",
            "image.arch",
            "image.field",
        )
    },
    **{
        path: (lambda v: v is None or isinstance(v, str), "a file path or null")
        for path in ("genomic.mlp_a_weights", "image.pretrained")
    },
    "kronecker.skip": (lambda v: isinstance(v, bool), "true or false"),
    "image.out": (lambda v: v is None or _is_count(v), "a positive integer or null"),
    "image.encoder": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "image.bag.field": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "image.bag.max_tiles": (_is_count, "a positive integer"),
    "image.bag.hidden": (_is_count, "a positive integer"),
    "image.bag.attention": (_is_count, "a positive integer"),
    "image.bag.dropout": (_is_rate, "a number in [0, 1)"),
    "image.drop_path": (_is_rate, "a number in [0, 1)"),
}


def resolve_model_cfg(model_cfg: Mapping | DictConfig) -> dict:
    """The model config as a plain dict: DEFAULTS updated with model_cfg, checked.

    Raises PgoError naming the key for an unknown key, a bad value or an unknown modality/fusion.
    """
    given = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else model_cfg
    )
    cfg = _merge(DEFAULTS, given or {}, "model")
    for key, value in cfg["genomic"]["rna_snn"].items():  # null: the same as the omics SNN's
        if value is None:
            cfg["genomic"]["rna_snn"][key] = copy.deepcopy(cfg["genomic"]["snn"][key])
    for path, (ok, valid) in _VALUE_RULES.items():
        value = cfg
        for part in path.split("."):
            value = value[part]
        if not ok(value):
            raise PgoError(f"model.{path}={value!r} is not valid; valid: {valid}")
    modalities = cfg["modalities"]
    if (
        not isinstance(modalities, list)
        or not modalities
        or len(set(modalities)) != len(modalities)
        or not set(modalities) <= set(MODALITIES)
    ):
        raise PgoError(
            f"model.modalities={modalities!r} is not valid; valid: [genomic, image], [genomic], [image]"
        )
    cfg["modalities"] = [m for m in MODALITIES if m in modalities]  # genomic first: W = [W^G | W^P]
    if cfg["fusion"] not in FUSIONS:
        raise PgoError(f"model.fusion={cfg['fusion']!r} is unknown; valid: {', '.join(FUSIONS)}")
    if cfg["image"]["encoder"] not in IMAGE_ENCODERS:
        raise PgoError(
            f"model.image.encoder={cfg['image']['encoder']!r} is unknown; valid: "
            f"{', '.join(IMAGE_ENCODERS)}"
        )
    return cfg


class SurvivalModel(nn.Module):
    """batch -> {"theta": (B,) log hazard, higher = worse} (+ "theta_g", "theta_p" for concat
    fusion, + "attention" (B, N) for model.image.encoder=abmil).

    Attributes: genomic (GenomicEncoder | None), image (an IMAGE_ENCODERS entry | None), fusion
    (the head), cfg (the resolved model config). A branch returns its features (B, d), or a dict
    of them under "features" with side outputs (the attention weights) passed through to the
    model's outputs.
    """

    def __init__(
        self,
        genomic: GenomicEncoder | None,
        image: nn.Module | None,
        fusion: nn.Module,
        cfg: Mapping,
    ):
        super().__init__()
        self.genomic, self.image, self.fusion = genomic, image, fusion
        self.cfg = dict(cfg)

    @property
    def encoders(self) -> dict[str, nn.Module]:
        """The branches present, by modality name, genomic first."""
        both = {"genomic": self.genomic, "image": self.image}
        return {m: enc for m, enc in both.items() if enc is not None}

    @property
    def field_modality(self) -> dict[str, str]:
        """Each batch key the model reads -> its modality."""
        return {f: m for m, enc in self.encoders.items() for f in enc.fields}

    @property
    def required_fields(self) -> frozenset[str]:
        """Batch keys the model reads (survival keys are the engine's)."""
        return frozenset(self.field_modality)

    @property
    def supports_balance(self) -> bool:
        """True when forward returns theta_g and theta_p (concat fusion over both modalities)."""
        return bool(self.fusion.supports_balance)

    def check_fields(self, available: Iterable[str], source: str = "the shard set") -> None:
        """Raise PgoError naming the first missing field, its modality and config key, and what exists."""
        available = set(available)
        for modality, enc in self.encoders.items():
            for field, key in enc.fields.items():
                if field not in available:
                    raise PgoError(
                        f"{source} lacks field {field!r} needed by the {modality} modality "
                        f"({key}); available fields: {', '.join(sorted(available)) or 'none'}"
                    )

    def require_per_modality_theta(self, what: str) -> None:
        """Raise PgoError when `what` (e.g. "balance.mode=rho") needs theta_g/theta_p and there are none."""
        if not self.supports_balance:
            raise PgoError(
                f"{what} needs the per-modality theta^m = W^m m + b/2 of model.fusion=concat with "
                f"model.modalities=[genomic, image]; this model has fusion={self.cfg['fusion']} and "
                f"modalities [{', '.join(self.encoders)}]; valid: balance.mode=none, or fusion=concat "
                "with both modalities"
            )

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: one per modality present ("genomic", "image") and "head".

        Frozen parameters (MLP-A) are left out. Every trainable parameter is in exactly one group.
        """
        parts = {**self.encoders, "head": self.fusion}
        return {
            name: [p for p in module.parameters() if p.requires_grad]
            for name, module in parts.items()
        }

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_fields(batch.keys(), source="the batch")
        features, side = {}, {}
        for modality, enc in self.encoders.items():
            out = enc(batch)
            if isinstance(out, Mapping):
                side.update({k: v for k, v in out.items() if k != "features"})
                out = out["features"]
            features[modality] = out
        return {**self.fusion(features), **side}


# modality -> builder(resolved cfg, feature_dims, image_size) -> branch module
_BRANCHES = registry.MODALITIES.bind(
    {
        "genomic": lambda cfg, dims, size: GenomicEncoder(cfg["genomic"], dims),
        "image": lambda cfg, dims, size: IMAGE_ENCODERS[cfg["image"]["encoder"]](
            cfg["image"], dims, size
        ),
    }
)


def build_model(
    model_cfg: Mapping | DictConfig,
    *,
    feature_dims: Mapping[str, int],
    image_size: int | None,
) -> SurvivalModel:
    """Build the SurvivalModel a model config describes (keys and defaults: module docstring).

    feature_dims: width of each omics/embedding field of the shard set; image_size: the side of
    the (square) training images in pixels, or None for an omics-only cohort or a bag encoder
    (feature_dims then holds the tile-feature field's width D). Raises PgoError on
    an unknown name (listing the valid ones) or a field the shard set lacks.
    """
    cfg = resolve_model_cfg(model_cfg)
    branches = {m: _BRANCHES[m](cfg, feature_dims, image_size) for m in cfg["modalities"]}
    fusion = FUSIONS[cfg["fusion"]](
        {m: branch.out_dim for m, branch in branches.items()}, cfg["kronecker"]
    )
    return SurvivalModel(branches.get("genomic"), branches.get("image"), fusion, cfg)
