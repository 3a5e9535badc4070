"""Fusion heads: the concat head's two weight blocks and theta identity; gated Kronecker fusion."""

import pytest
import torch

from hpc_pgo.errors import PgoError
from hpc_pgo.models.fusion import ConcatFusion, KroneckerFusion

KRONECKER_CFG = {"hidden": 16, "dropout": 0.25, "skip": True}


def _features(batch=6, dim_g=5, dim_p=7):
    torch.manual_seed(0)
    return {"genomic": torch.randn(batch, dim_g), "image": torch.randn(batch, dim_p)}


def test_concat_theta_is_sum_of_modality_thetas_from_weight_blocks():
    head = ConcatFusion({"genomic": 5, "image": 7})
    with torch.no_grad():
        head.linear.bias.fill_(0.3)
    feats = _features()
    out = head(feats)
    assert set(out) == {"theta", "theta_g", "theta_p"}
    assert all(t.shape == (6,) for t in out.values())
    assert torch.equal(out["theta"], out["theta_g"] + out["theta_p"])  # exactly, not approximately
    w = head.linear.weight.detach()
    assert torch.equal(head.weight_block("genomic"), head.linear.weight[:, :5])
    assert torch.equal(head.weight_block("image"), head.linear.weight[:, 5:])
    theta_g = feats["genomic"] @ w[0, :5] + 0.15
    theta_p = feats["image"] @ w[0, 5:] + 0.15
    assert torch.allclose(out["theta_g"], theta_g, atol=1e-6)
    assert torch.allclose(out["theta_p"], theta_p, atol=1e-6)
    # and the whole is the paper's Eq. 1: W [G || P] + b
    joint = torch.cat([feats["genomic"], feats["image"]], dim=1) @ w[0] + 0.3
    assert torch.allclose(out["theta"], joint, atol=1e-6)
    assert head.supports_balance


def test_concat_blocks_share_storage_with_the_head_weight():
    head = ConcatFusion({"genomic": 3, "image": 2})
    with torch.no_grad():
        head.weight_block("image").fill_(2.0)
    assert torch.equal(head.linear.weight[0, 3:], torch.full((2,), 2.0))


def test_concat_with_one_modality_gives_theta_only():
    head = ConcatFusion({"image": 7})
    out = head({"image": torch.randn(4, 7)})
    assert set(out) == {"theta"} and out["theta"].shape == (4,)
    assert not head.supports_balance


def test_kronecker_dims_forward_backward():
    head = KroneckerFusion({"genomic": 5, "image": 7}, KRONECKER_CFG)
    # [o_G, 1] outer [o_P, 1]: (5 + 1) * (7 + 1) inputs to the first encoder layer
    assert head.encoder1[0].in_features == 6 * 8
    assert head.encoder2[0].in_features == 16 + 6 + 8  # hidden + skip of both [o_m, 1]
    feats = {k: v.requires_grad_() for k, v in _features().items()}
    out = head(feats)
    assert set(out) == {"theta"} and out["theta"].shape == (6,)
    out["theta"].sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert feats["genomic"].grad.abs().sum() > 0 and feats["image"].grad.abs().sum() > 0
    assert not head.supports_balance


def test_kronecker_without_skip_and_in_eval_is_deterministic():
    head = KroneckerFusion({"genomic": 4, "image": 4}, {**KRONECKER_CFG, "skip": False}).eval()
    assert head.encoder2[0].in_features == 16
    feats = _features(dim_g=4, dim_p=4)
    assert torch.equal(head(feats)["theta"], head(feats)["theta"])


def test_kronecker_keeps_unimodal_terms_through_the_appended_one():
    # With o_P forced to zero, [o_P, 1] = [0..0, 1]: the product still carries o_G (its last column).
    # No skip connection, so o_G reaches theta only through the product.
    head = KroneckerFusion({"genomic": 3, "image": 2}, {**KRONECKER_CFG, "skip": False}).eval()
    with torch.no_grad():
        head.gate_p.out[0].weight.zero_()
        head.gate_p.out[0].bias.fill_(-1.0)  # ReLU -> 0
    a, b = _features(dim_g=3, dim_p=2), _features(dim_g=3, dim_p=2)
    b["genomic"] = b["genomic"] + 1.0
    assert not torch.allclose(head(a)["theta"], head(b)["theta"])


def test_kronecker_needs_both_modalities():
    with pytest.raises(
        PgoError, match=r"kronecker needs modalities \[genomic, image\]; got \[genomic\]"
    ):
        KroneckerFusion({"genomic": 4}, KRONECKER_CFG)
