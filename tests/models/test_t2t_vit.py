"""T2T-ViT: parameter counts against the T2T-ViT paper, timm registry, image sizes, local weights."""

import math

import pytest
import timm
import torch

import hpc_pgo.models  # noqa: F401  (registers t2t_vit_* in timm)
from hpc_pgo.errors import PgoError
from hpc_pgo.models.t2t_vit import T2TViT, TokenPerformer, sinusoid_position_embedding

# Params (millions) in Table 1 of Yuan et al. 2021 (1000-class head, 224 px).
PAPER_PARAMS_M = {
    "t2t_vit_7": 4.3,
    "t2t_vit_10": 5.9,
    "t2t_vit_12": 6.9,
    "t2t_vit_14": 21.5,
    "t2t_vit_19": 39.2,
    "t2t_vit_24": 64.1,
    "t2t_vit_t_14": 21.5,
}
TOLERANCE = 0.02  # the table rounds to 0.1M: 4.3M is only 2 significant digits


@pytest.mark.parametrize(
    "name",
    [
        "t2t_vit_7",
        "t2t_vit_10",
        "t2t_vit_12",
        "t2t_vit_14",
        pytest.param("t2t_vit_19", marks=pytest.mark.slow),
        pytest.param("t2t_vit_24", marks=pytest.mark.slow),
        pytest.param("t2t_vit_t_14", marks=pytest.mark.slow),
    ],
)
def test_parameter_count_matches_paper_table(name):
    model = timm.create_model(name, num_classes=1000, img_size=224)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(trainable / 1e6 - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < TOLERANCE
    # nothing frozen hides among the parameters: the random features are a buffer
    assert trainable == sum(p.numel() for p in model.parameters())


def test_registered_in_timm_without_download_urls():
    names = timm.list_models("t2t_vit*")
    for variant in ("7", "10", "12", "14", "19", "24"):
        assert f"t2t_vit_{variant}" in names
    cfg = timm.models.get_pretrained_cfg("t2t_vit_14")
    assert not cfg.url and not cfg.hf_hub_id
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("t2t_vit_7", pretrained=True)


@pytest.fixture(scope="module")
def t2t_14():
    torch.manual_seed(0)
    return timm.create_model("t2t_vit_14", num_classes=0).eval()


def test_features_at_sizes_divisible_by_16(t2t_14):
    for side in (64, 96, 224):
        x = torch.randn(1, 3, side, side)
        with torch.no_grad():
            tokens = t2t_14.forward_features(x)
            features = t2t_14.forward_head(tokens)
        assert tokens.shape == (1, 1 + (side // 16) ** 2, 384)
        assert features.shape == (1, 384)
        assert torch.equal(features, tokens[:, 0])  # the cls token after the final norm
    with torch.no_grad():
        assert t2t_14.forward_features(torch.randn(1, 3, 64, 96)).shape == (1, 1 + 4 * 6, 384)


def test_image_size_not_divisible_by_16_is_a_clear_error(t2t_14):
    with pytest.raises(PgoError, match=r"100x100 .*multiples of 16"):
        t2t_14(torch.randn(1, 3, 100, 100))
    with pytest.raises(PgoError, match=r"img_size.*multiples of 16"):
        timm.create_model("t2t_vit_7", num_classes=0, img_size=200)


@pytest.mark.parametrize("tokens_type", ["performer", "transformer"])
def test_backward_reaches_every_parameter(tokens_type):
    # a narrow 2-layer T2T-ViT: the same code path as the registered variants, at a fraction of the cost
    model = T2TViT(
        img_size=32,
        tokens_type=tokens_type,
        num_classes=3,
        embed_dim=32,
        depth=2,
        num_heads=2,
        token_dim=16,
        drop_path_rate=0.1,
    )
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_token_layer_lists_valid_ones():
    with pytest.raises(
        PgoError, match="tokens_type 'linformer' is unknown; valid: performer, transformer"
    ):
        T2TViT(tokens_type="linformer", embed_dim=32, depth=1, num_heads=2)


def test_local_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("t2t_vit_7", num_classes=1000)
    path = tmp_path / "t2t7.pth"
    torch.save(source.state_dict(), path)
    loaded = timm.create_model(
        "t2t_vit_7", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0
    )
    reference = source.state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[key]), key
    x = torch.randn(1, 3, 64, 64)
    source.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), source.forward_head(source.forward_features(x), True))


def test_sinusoid_position_embedding_formula():
    table = sinusoid_position_embedding(10, 8)
    assert table.shape == (1, 10, 8)
    for p, j in [(0, 0), (3, 4), (3, 5), (9, 7)]:
        angle = p / 10000 ** (2 * (j // 2) / 8)
        expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
        assert table[0, p, j].item() == pytest.approx(expected, abs=1e-6)


def test_performer_random_features_are_orthogonal_with_norm_sqrt_dim():
    # FAVOR+ needs E[exp(w.x)] = exp(|x|^2/2), i.e. rows like N(0, I): norm sqrt(token_dim)
    layer = TokenPerformer(dim=147, token_dim=64, kernel_ratio=0.5)
    w = layer.random_features
    assert w.shape == (32, 64)
    assert torch.allclose(w @ w.t(), 64 * torch.eye(32), atol=1e-3)
    assert "random_features" in layer.state_dict()
    assert all(p is not w for p in layer.parameters())


def test_performer_with_equal_scores_averages_values():
    # q = k = 0 makes every phi equal: the attention is the mean of v over the tokens.
    torch.manual_seed(0)
    layer = TokenPerformer(dim=6, token_dim=4).eval()
    with torch.no_grad():
        layer.kqv.weight[:8] = 0
        layer.kqv.bias[:8] = 0
    x = torch.randn(2, 5, 6)
    v = layer.kqv(layer.norm1(x))[..., 8:]
    y = v + layer.proj(v.mean(dim=1, keepdim=True).expand_as(v))
    expected = y + layer.mlp(layer.norm2(y))
    assert torch.allclose(layer(x), expected, atol=1e-5)


def _small_t2t(**kwargs):
    return T2TViT(
        img_size=32, num_classes=0, embed_dim=32, depth=2, num_heads=2, token_dim=16, **kwargs
    )


def test_gradient_checkpointing_gives_the_same_features():
    torch.manual_seed(0)
    model = _small_t2t().eval()
    x = torch.randn(2, 3, 32, 32)
    plain = model(x)
    model.set_grad_checkpointing(True)
    assert torch.equal(model(x), plain)


def test_bf16_model_and_autocast_run_the_linear_attention_in_float32():
    torch.manual_seed(0)
    model = _small_t2t().eval()
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(model(x).float(), reference, atol=0.1)
    half = model.to(torch.bfloat16)
    assert half.tokens_to_token.attention1.random_features.dtype == torch.bfloat16
    out = half(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
