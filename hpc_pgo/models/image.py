"""The image branch: any timm architecture as a feature extractor, then a linear projection giving P.

    x        = image * scale + shift                             the batch (ImageNet-normalised, the
                                                                 loader's) in the backbone's own units
    features = timm.create_model(arch, num_classes=0)(x)        (B, num_features)
    P        = Linear(features)                                  (B, out), or features when out is null

The backbone's own units: the mean/std of its timm data config (``backbone_stats``: the model's
pretrained_cfg, e.g. CLIP's or Inception's (0.5, 0.5, 0.5)), ImageNet's only when it has none;
scale and shift come from hpc_pgo.data.transforms.renormalization (identity, and skipped, for a
backbone with ImageNet statistics, e.g. lcnet_050, resnet18, t2t_vit_*).

Weights come only from a local file (model.image.pretrained): timm loads it through its
pretrained-cfg file override (torch.load with weights_only=True, the classifier dropped, the
architecture's own checkpoint filter applied); nothing is downloaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg_value
from torch import nn

import hpc_pgo.models.t2t_vit  # noqa: F401  (registers t2t_vit_* in timm)
from hpc_pgo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, renormalization
from hpc_pgo.errors import PgoError
from hpc_pgo.models.weights import one_line, read_state_dict

__all__ = ["ImageEncoder", "backbone_stats", "create_backbone", "similar_timm_names"]


def similar_timm_names(arch: str, n: int = 8) -> list[str]:
    """timm architecture names close to `arch`: by spelling, else sharing its first word."""
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=n, cutoff=0.6)
    return close or timm.list_models(f"*{arch.split('_')[0]}*")[:n]


def _check_weights_cover(
    model: nn.Module,
    stored: Mapping[str, object],
    path: Path,
    arch: str,
    key: str = "model.image.pretrained",
) -> None:
    """Refuse a weights file that lacks any of the model's tensors (timm loads non-strictly when
    it drops the classifier, so a checkpoint of another architecture would leave layers random)."""
    missing = [k for k in model.state_dict() if k not in stored]
    if missing:
        raise PgoError(
            f"{key}={str(path)!r} lacks {len(missing)} of the "
            f"{len(model.state_dict())} tensors of {arch} (first: {missing[0]!r}); "
            f"valid: a state dict saved from timm.create_model({arch!r})"
        )


def create_backbone(
    arch: str,
    *,
    pretrained: str | Path | None = None,
    image_size: int | None = None,
    drop_path: float = 0.0,
    weights_key: str = "model.image.pretrained",
    arch_key: str = "model.image.arch",
) -> nn.Module:
    """timm.create_model(arch, num_classes=0) -> module mapping (B, 3, H, W) to (B, num_features).

    image_size is passed as img_size only to architectures with a fixed input size (ViTs,
    T2T-ViT); convolutional nets take any size. pretrained: a local state dict path, or None.
    weights_key, arch_key: how errors name `pretrained` and `arch` (the config keys, or CLI
    flags such as --weights and --arch).
    """
    if not timm.is_model(arch):
        raise PgoError(
            f"{arch_key}={arch!r} is not a timm architecture; similar names: "
            f"{', '.join(similar_timm_names(arch)) or 'none'} (all: timm.list_models())"
        )
    kwargs: dict = {"num_classes": 0}
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    if image_size is not None and get_pretrained_cfg_value(arch, "fixed_input_size"):
        kwargs["img_size"] = image_size
    stored = None
    if pretrained is not None:
        stored = read_state_dict(pretrained, weights_key)  # clear errors for bad files
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
    try:
        model = timm.create_model(arch, **kwargs)
    except PgoError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        source = f" with {weights_key}={str(pretrained)!r}" if stored is not None else ""
        raise PgoError(
            f"{arch_key}={arch!r} could not be built{source} "
            f"(timm.create_model kwargs {sorted(kwargs)}): {one_line(err)}"
        ) from err
    if stored is not None:
        _check_weights_cover(model, stored, Path(pretrained), arch, weights_key)
    return model


def backbone_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel, in [0, 1] pixel units, that the backbone's weights expect.

    timm's data config of the model (``timm.data.resolve_data_config``, which reads the model's
    pretrained_cfg); ImageNet's (IMAGENET_MEAN, IMAGENET_STD) when the model has none. A
    one-value statistic applies to the three channels.
    """
    data = resolve_data_config({}, model=model)
    mean, std = data.get("mean") or IMAGENET_MEAN, data.get("std") or IMAGENET_STD
    stats = []
    for name, values in (("mean", mean), ("std", std)):
        values = tuple(float(v) for v in values)
        values = values * 3 if len(values) == 1 else values
        if len(values) != 3 or (name == "std" and min(values) <= 0):
            raise PgoError(
                f"{type(model).__name__}: pretrained_cfg {name} {values} is not valid; valid: "
                f"3 channel values{' > 0' if name == 'std' else ''} (RGB)"
            )
        stats.append(values)
    return stats[0], stats[1]


class ImageEncoder(nn.Module):
    """image (B, 3, H, W) float, ImageNet-normalised (the loader's batches) -> P (B, out_dim).

    The backbone sees the image in its own statistics (``backbone_stats``; module text).
    """

    def __init__(self, cfg: Mapping, image_size: int | None):
        super().__init__()
        self.field = cfg["field"]
        self.backbone = create_backbone(
            cfg["arch"],
            pretrained=cfg["pretrained"],
            image_size=image_size,
            drop_path=cfg["drop_path"],
        )
        # head_hidden_size: the width after timm's pre-logits stage (e.g. MobileNetV3's conv_head).
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        out = cfg["out"]
        self.proj = nn.Linear(width, out) if out is not None else nn.Identity()
        self.out_dim = out if out is not None else width
        self.mean, self.std = backbone_stats(self.backbone)
        self.renormalize = (self.mean, self.std) != (IMAGENET_MEAN, IMAGENET_STD)
        scale, shift = renormalization((IMAGENET_MEAN, IMAGENET_STD), (self.mean, self.std))
        # Not persistent: derived from the architecture, so state dicts and checkpoints keep
        # exactly the learned tensors (and load across versions); moved and cast with the model.
        self.register_buffer("input_scale", scale.view(3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(3, 1, 1), persistent=False)

    @property
    def fields(self) -> dict[str, str]:
        """Batch keys this branch reads -> the config key that names each."""
        return {self.field: "model.image.field"}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        image = batch[self.field]
        if self.renormalize:
            image = torch.addcmul(self.input_shift, image, self.input_scale)
        return self.proj(self.backbone(image))
