"""Models: SNN, MLPs, the scGPT wrapper, T2T-ViT registered in timm, MIL bag pools, fusion heads.

Importing this package registers t2t_vit_7 ... t2t_vit_24 (and t2t_vit_t_14/19/24) in timm.
The engine builds a model with `build_model(cfg.model, feature_dims=..., image_size=...)`;
keys and defaults: configs/model/_base.yaml (read by hpc_pgo.models.survival as DEFAULTS).
"""

from hpc_pgo.models.bags import IMAGE_ENCODERS, GatedAttentionBag, MeanPoolBag
from hpc_pgo.models.fusion import FUSIONS, THETA_KEYS, ConcatFusion, KroneckerFusion
from hpc_pgo.models.genomic import MLP, RNA_ENCODERS, SNN, GenomicEncoder, load_mlp_weights
from hpc_pgo.models.image import ImageEncoder, create_backbone
from hpc_pgo.models.survival import DEFAULTS, SurvivalModel, build_model, resolve_model_cfg
from hpc_pgo.models.t2t_vit import T2TViT

__all__ = [
    "DEFAULTS",
    "FUSIONS",
    "IMAGE_ENCODERS",
    "MLP",
    "RNA_ENCODERS",
    "SNN",
    "THETA_KEYS",
    "ConcatFusion",
    "GatedAttentionBag",
    "GenomicEncoder",
    "ImageEncoder",
    "KroneckerFusion",
    "MeanPoolBag",
    "SurvivalModel",
    "T2TViT",
    "build_model",
    "create_backbone",
    "load_mlp_weights",
    "resolve_model_cfg",
]
