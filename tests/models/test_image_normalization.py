"""The image backbone sees its images in its OWN statistics (timm's pretrained_cfg mean/std), not
ImageNet's whatever the architecture; ImageNet's only when the model has none (issue 10, 9d).

The reference is torchvision's normalize with the mean/std read from timm's registry
(timm.models.get_pretrained_cfg), applied to the same uint8 pixels the loader starts from.
"""

import pytest
import timm
import torch
import torchvision.transforms.v2.functional as F
from timm.models import get_pretrained_cfg
from torch import nn

from hpc_pgo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, renormalization
from hpc_pgo.models import build_model
from hpc_pgo.models.image import ImageEncoder, backbone_stats

SIDE = 32


def encoder(arch: str) -> ImageEncoder:
    cfg = {"arch": arch, "pretrained": None, "out": 4, "drop_path": 0.0, "field": "image"}
    return ImageEncoder(cfg, image_size=SIDE)


def seen_by_backbone(enc: ImageEncoder, batch: dict) -> torch.Tensor:
    """The tensor the backbone's forward receives (a forward pre-hook records it)."""
    seen = []
    handle = enc.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        enc(batch)
    finally:
        handle.remove()
    return seen[0]


def pixels(n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIDE, SIDE), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8
    )


# timm's tiny test ViT and MobileViT-XXS: pretrained with other statistics than ImageNet's
# (Inception-style 0.5 / 0.5; 0 / 1); CLIP's are checked on the registry alone (no download).
@pytest.mark.parametrize("arch", ["test_vit", "mobilevit_xxs"])
def test_backbone_gets_its_own_pretrained_statistics(arch):
    cfg = get_pretrained_cfg(arch)
    assert (tuple(cfg.mean), tuple(cfg.std)) != (IMAGENET_MEAN, IMAGENET_STD)
    enc = encoder(arch).eval()
    assert (enc.mean, enc.std) == (tuple(cfg.mean), tuple(cfg.std))

    views = pixels()
    batch = {"image": normalize(views)}  # what the loader serves: ImageNet-normalised
    expected = F.normalize(F.to_dtype(views, torch.float32, scale=True), cfg.mean, cfg.std)
    torch.testing.assert_close(seen_by_backbone(enc, batch), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and the features are the backbone's on those inputs
        torch.testing.assert_close(enc(batch), enc.proj(enc.backbone(expected)))


def test_imagenet_backbone_sees_the_batch_unchanged():
    enc = encoder("lcnet_050").eval()  # the demo preset's encoder: ImageNet statistics
    assert (enc.mean, enc.std) == (IMAGENET_MEAN, IMAGENET_STD) and not enc.renormalize
    batch = {"image": normalize(pixels())}
    assert seen_by_backbone(enc, batch) is batch["image"]


def test_imagenet_is_only_the_fallback():
    clip = get_pretrained_cfg("vit_base_patch16_clip_224")
    assert tuple(clip.mean) != IMAGENET_MEAN  # CLIP's own statistics exist in the registry
    assert backbone_stats(nn.Linear(2, 2)) == (IMAGENET_MEAN, IMAGENET_STD)  # no pretrained_cfg
    model = timm.create_model("test_vit", num_classes=0, img_size=SIDE)
    assert backbone_stats(model) == ((0.5,) * 3, (0.5,) * 3)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.2,), "std": (0.4,)}
    assert backbone_stats(model) == ((0.2,) * 3, (0.4,) * 3)  # one value: every channel


def test_statistics_stay_out_of_the_state_dict():
    model = build_model(
        {"modalities": ["image"], "image": {"arch": "test_vit", "out": 4}},
        feature_dims={},
        image_size=SIDE,
    )
    assert model.image.renormalize
    assert not any("input_scale" in k or "input_shift" in k for k in model.state_dict())


def test_renormalization_is_the_affine_map_between_the_two():
    views = pixels().to(torch.float32) / 255
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP
    scale, shift = renormalization((IMAGENET_MEAN, IMAGENET_STD), (mean, std))
    x = F.normalize(views, IMAGENET_MEAN, IMAGENET_STD)
    got = x * scale.view(3, 1, 1) + shift.view(3, 1, 1)
    torch.testing.assert_close(got, F.normalize(views, mean, std), rtol=1e-5, atol=1e-5)
