"""The MIL image encoders over tile-feature bags (hpc_pgo.models.bags), through build_model."""

from __future__ import annotations

import pytest
import torch

from hpc_pgo.config import registry
from hpc_pgo.errors import PgoError
from hpc_pgo.models import IMAGE_ENCODERS, GatedAttentionBag, ImageEncoder, MeanPoolBag, build_model
from hpc_pgo.models.survival import resolve_model_cfg

D = 7
DIMS = {"cnv": 5, "mut": 3, "rna": 6, "tile_features": D}
BAG = {"hidden": 8, "attention": 4, "dropout": 0.25}


def image_model(encoder: str, **image) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"modalities": ["image"], "image": {"encoder": encoder, "out": 3, "bag": BAG, **image}}
    return build_model(cfg, feature_dims=DIMS, image_size=None)


def bags(sizes: list[int], width: int | None = None, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch of bags of the given sizes, padded to `width` with rows of garbage (not zeros:
    padding must not matter whatever it holds) and a mask."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(sizes)
    x = torch.randn(len(sizes), width, D, generator=g)
    mask = torch.zeros(len(sizes), width, dtype=torch.bool)
    for i, n in enumerate(sizes):
        mask[i, :n] = True
        x[i, n:] = 1e3 * torch.randn(width - n, D, generator=g)
    return {"tile_features": x, "tile_features_mask": mask}


def test_registry_names_match_the_builders_and_the_branch_types():
    assert registry.IMAGE_ENCODERS.names() == tuple(IMAGE_ENCODERS) == ("backbone", "mean", "abmil")
    assert isinstance(image_model("mean").image, MeanPoolBag)
    assert isinstance(image_model("abmil").image, GatedAttentionBag)
    cfg = {"modalities": ["image"], "image": {"arch": "lcnet_050"}}
    backbone = build_model(cfg, feature_dims={}, image_size=16).image
    assert isinstance(backbone, ImageEncoder)  # the default encoder: end to end, unchanged
    assert registry.reads_bags("abmil") and registry.reads_bags("mean")
    assert not registry.reads_bags("backbone") and not registry.reads_bags("nope")


@pytest.mark.parametrize("encoder", ["mean", "abmil"])
def test_padding_never_changes_the_output(encoder):
    model = image_model(encoder).eval()
    tight = bags([3, 5, 1])
    padded = bags([3, 5, 1], width=9)
    for i, n in enumerate([3, 5, 1]):  # the same tiles, more padding (of other values)
        padded["tile_features"][i, :n] = tight["tile_features"][i, :n]
    a, b = model(tight), model(padded)
    torch.testing.assert_close(a["theta"], b["theta"], rtol=1e-6, atol=1e-6)
    if encoder == "abmil":
        torch.testing.assert_close(a["attention"], b["attention"][:, :5], rtol=1e-6, atol=1e-7)
        assert (b["attention"][:, 5:] == 0).all()


@pytest.mark.parametrize("encoder", ["mean", "abmil"])
def test_the_mask_is_respected_and_a_bag_alone_decides_its_output(encoder):
    model = image_model(encoder).eval()
    batch = bags([4, 4])
    before = model(batch)["theta"]
    batch["tile_features"][0, 2:] += 5.0  # changing valid tiles of bag 0 changes only bag 0
    after = model(batch)["theta"]
    assert after[0] != before[0] and after[1] == before[1]
    batch["tile_features_mask"][0, 2:] = (
        False  # bag 0 now ends at 2: its last tiles no longer count
    )
    masked = model(batch)["theta"]
    alone = model(
        {
            "tile_features": batch["tile_features"][:1, :2],
            "tile_features_mask": batch["tile_features_mask"][:1, :2],
        }
    )
    torch.testing.assert_close(masked[:1], alone["theta"], rtol=1e-6, atol=1e-6)
    # an empty bag (image unavailable under --missing mask): finite, the projection's bias alone
    empty = model(
        {
            "tile_features": torch.randn(1, 3, D),
            "tile_features_mask": torch.zeros(1, 3, dtype=torch.bool),
        }
    )
    assert torch.isfinite(empty["theta"]).all()


def test_attention_sums_to_one_over_the_valid_tiles_and_is_zero_on_padding():
    model = image_model("abmil").eval()
    batch = bags([1, 4, 6, 0], width=6)
    a = model(batch)["attention"]
    assert a.shape == (4, 6)
    torch.testing.assert_close(a[:3].sum(1), torch.ones(3))
    assert a[0, 0] == 1.0 and (a[~batch["tile_features_mask"]] == 0).all()
    assert (a[3] == 0).all()  # an empty bag attends to nothing
    assert (a[1:3][batch["tile_features_mask"][1:3]] > 0).all()


@pytest.mark.parametrize("encoder", ["mean", "abmil"])
def test_both_pools_are_permutation_invariant(encoder):
    model = image_model(encoder).eval()
    batch = bags([6, 4], width=6)
    out = model(batch)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = {
        "tile_features": batch["tile_features"][:, order],
        "tile_features_mask": batch["tile_features_mask"][:, order],
    }
    again = model(shuffled)
    torch.testing.assert_close(out["theta"], again["theta"], rtol=1e-6, atol=1e-6)
    if encoder == "abmil":  # each tile keeps its weight, wherever it sits
        torch.testing.assert_close(out["attention"][:, order], again["attention"])


@pytest.mark.parametrize("encoder", ["mean", "abmil"])
def test_gradients_flow_to_every_parameter_and_not_from_padding(encoder):
    model = image_model(encoder).train()
    batch = bags([5, 2, 0], width=5)
    batch["tile_features"].requires_grad_(True)
    model(batch)["theta"].sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    grad = batch["tile_features"].grad
    assert (grad[~batch["tile_features_mask"]] == 0).all()
    assert grad[0].abs().sum() > 0


@pytest.mark.parametrize(
    "key,value,valid",
    [
        ("max_tiles", 0, "a positive integer"),
        ("hidden", -1, "a positive integer"),
        ("attention", 2.5, "a positive integer"),
        ("dropout", 1.0, "a number in [0, 1)"),
        ("field", "", "a non-empty string"),
    ],
)
def test_bad_bag_values_are_refused_naming_the_key(key, value, valid):
    with pytest.raises(PgoError) as caught:
        resolve_model_cfg({"image": {"encoder": "abmil", "bag": {key: value}}})
    assert str(caught.value) == f"model.image.bag.{key}={value!r} is not valid; valid: {valid}"


def test_unknown_encoder_and_bag_key_and_missing_field_are_refused():
    with pytest.raises(
        PgoError, match=r"model.image.encoder='clam' is unknown; valid: backbone, mean, abmil"
    ):
        resolve_model_cfg({"image": {"encoder": "clam"}})
    with pytest.raises(PgoError, match=r"model.image.bag.tiles is not a model config key"):
        resolve_model_cfg({"image": {"bag": {"tiles": 3}}})
    with pytest.raises(PgoError, match=r"model.image.bag.field='uni'.*embed-tiles"):
        build_model(
            {"modalities": ["image"], "image": {"encoder": "mean", "bag": {"field": "uni"}}},
            feature_dims=DIMS, image_size=None,
        )  # fmt: skip


def test_fusion_with_abmil_splits_theta_and_passes_attention_through():
    torch.manual_seed(0)
    cfg = {
        "image": {"encoder": "abmil", "out": 4, "bag": BAG},
        "genomic": {"groups": ["cnv", "mut"]},
    }
    model = build_model(cfg, feature_dims=DIMS, image_size=None).eval()
    assert model.supports_balance
    assert set(model.param_groups()) == {"genomic", "image", "head"}
    assert model.required_fields >= {"cnv", "mut", "tile_features"}
    batch = {
        **bags([2, 3]),
        "cnv": torch.randn(2, 5),
        "mut": torch.randn(2, 3),
        "rna": torch.randn(2, 6),
    }
    out = model(batch)
    torch.testing.assert_close(out["theta"], out["theta_g"] + out["theta_p"])
    assert out["attention"].shape == (2, 3)


@pytest.mark.parametrize("encoder", ["mean", "abmil"])
def test_the_engines_device_move_casts_the_bag_to_bf16_and_keeps_the_mask_bool(encoder):
    from types import SimpleNamespace

    from hpc_pgo.engine.engine import Engine

    engine = SimpleNamespace(
        dist_env=SimpleNamespace(device=torch.device("cpu")), compute_dtype=torch.bfloat16
    )
    batch = {
        **bags([3, 1, 0], width=3),
        "time": torch.ones(3),
        "event": torch.ones(3),
        "units": [["a"]] * 3,
    }
    moved = Engine.to_device(engine, batch)
    assert (
        moved["tile_features"].dtype == torch.bfloat16
        and moved["tile_features_mask"].dtype == torch.bool
    )
    assert moved["time"].dtype == torch.float32 and moved["units"] == batch["units"]
    model = image_model(encoder).eval()
    want = model(batch)
    got = model.to(torch.bfloat16)(moved)
    assert torch.isfinite(got["theta"]).all()
    torch.testing.assert_close(got["theta"].float(), want["theta"], rtol=0.05, atol=0.05)
    if encoder == "abmil":  # the softmax runs in float32 whatever the compute dtype
        assert got["attention"].dtype == torch.float32
        torch.testing.assert_close(got["attention"][:2].sum(1), torch.ones(2))
