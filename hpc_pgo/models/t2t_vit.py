"""T2T-ViT (Yuan et al., "Tokens-to-Token ViT", ICCV 2021), written for hpc_pgo and registered in timm.

After `import hpc_pgo.models`, `timm.create_model("t2t_vit_14", num_classes=0)` builds the model
like any timm architecture. Variants (backbone layers, width, heads, MLP ratio; params with the
1000-class head at 224 px, as the T2T-ViT paper's table gives them / as built here):

    t2t_vit_7    7 layers, 256, 4 heads, ratio 2   4.3M / 4.26M
    t2t_vit_10  10 layers, 256, 4 heads, ratio 2   5.9M / 5.83M
    t2t_vit_12  12 layers, 256, 4 heads, ratio 2   6.9M / 6.89M
    t2t_vit_14  14 layers, 384, 6 heads, ratio 3  21.5M / 21.47M
    t2t_vit_19  19 layers, 448, 7 heads, ratio 3  39.2M / 39.09M
    t2t_vit_24  24 layers, 512, 8 heads, ratio 3  64.1M / 64.00M
    t2t_vit_t_14/19/24: the same backbones with the plain-attention token transformer (T2T-ViT_t).

The tokens-to-token module: soft split (nn.Unfold, kernel 7, stride 4, padding 2) of the image
into overlapping 7x7 patches, then twice [token layer -> re-structurization into a 2-D grid ->
soft split with kernel 3, stride 2, padding 1], then a linear projection to the backbone width.
Total stride 16: an H x W image (both divisible by 16) gives (H/16)(W/16) tokens. A cls token is
prepended and a fixed sinusoidal position embedding added, computed for whatever number of
tokens the input gives (so any image size divisible by 16 runs, also sizes other than img_size).

Token layer: the T2T-ViT-7...24 of the paper's table use a Performer (linear attention with
positive orthogonal random features, FAVOR+) with token width 64, one head, MLP ratio 1; we
implement that as the default (tokens_type="performer"), so the counts above match the table to
within 1.2% (T2T-ViT-10 is the farthest: 5.83M vs 5.9M; the table rounds to 0.1M). The random
feature matrix is a fixed buffer, not a parameter, as it is not trained. tokens_type="transformer"
gives the T2T-ViT_t variants (softmax attention, same parameter count within 400).

The backbone is timm's ViT `Block` (pre-norm, qkv without bias as in T2T-ViT). `pretrained=True`
never downloads: pass `pretrained_cfg_overlay=dict(file=path)` with a local state dict (loaded
with torch.load(weights_only=True) by timm); without a file timm raises "No pretrained weights".
Official T2T-ViT checkpoints use a different attention scale for some variants and other key
names in the token layers; they are not supported as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block
from torch import nn

from hpc_pgo.errors import PgoError

__all__ = ["T2TViT", "sinusoid_position_embedding", "TOKEN_LAYERS"]

TOTAL_STRIDE = 16  # 4 * 2 * 2: the three soft splits


def sinusoid_position_embedding(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position embedding (Vaswani et al. 2017), shape (1, n_positions, dim).

    E[p, 2i] = sin(p / 10000^(2i/dim)), E[p, 2i+1] = cos(p / 10000^(2i/dim)); position 0 is the
    cls token. float32.
    """
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    pair = torch.arange(dim, dtype=torch.float64) // 2
    angle = position / torch.pow(10000.0, 2.0 * pair / dim)
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)[None]


class TokenPerformer(nn.Module):
    """Performer token layer: x (B, T, dim) -> (B, T, token_dim).

    k, q, v = split(Linear(LN(x))) each (B, T, e); phi(u) = exp(w u - |u|^2 / 2) / sqrt(m) with
    m = e * kernel_ratio fixed orthogonal random rows w (norm sqrt(e), FAVOR+ positive features),
    so softmax(q k^T) v ~ phi(q) (phi(k)^T v) / (phi(q) sum_t phi(k_t)) in O(T m e).
    v is the skip connection (the width changes from dim to e), then y + MLP(LN(y)).
    """

    def __init__(
        self, dim: int, token_dim: int, kernel_ratio: float = 0.5, drop: float = 0.1
    ) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * token_dim)
        self.attn_drop = nn.Dropout(drop)
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, token_dim, token_dim, drop=(0.0, drop))
        m = int(token_dim * kernel_ratio)
        features = nn.init.orthogonal_(torch.empty(m, token_dim)) * math.sqrt(token_dim)
        self.register_buffer("random_features", features)

    def _phi(self, u: torch.Tensor) -> torch.Tensor:
        """Positive random features of u (B, T, e) float32 -> (B, T, m)."""
        w = self.random_features.float()
        return torch.exp(u @ w.t() - (u * u).sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.token_dim, dim=-1)
        # exp of the projections overflows half precision: the linear attention runs in float32,
        # also under autocast and in a model cast to bf16/fp16.
        with torch.autocast(device_type=x.device.type, enabled=False):
            phi_k, phi_q = self._phi(k.float()), self._phi(q.float())
            normaliser = phi_q @ phi_k.sum(dim=1, keepdim=True).transpose(1, 2)  # (B, T, 1)
            attended = (phi_q @ (phi_k.transpose(1, 2) @ v.float())) / (normaliser + 1e-8)
        y = v + self.attn_drop(self.proj(attended.to(v.dtype)))
        return y + self.mlp(self.norm2(y))


class TokenTransformer(nn.Module):
    """Softmax-attention token layer (T2T-ViT_t): x (B, T, dim) -> (B, T, token_dim).

    One head of width e = token_dim: v + proj(softmax(q k^T / sqrt(e)) v), then y + MLP(LN(y)).
    """

    def __init__(self, dim: int, token_dim: int) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * token_dim, bias=False)
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, token_dim, token_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).split(self.token_dim, dim=-1)
        y = v + self.proj(F.scaled_dot_product_attention(q, k, v))
        return y + self.mlp(self.norm2(y))


TOKEN_LAYERS = {"performer": TokenPerformer, "transformer": TokenTransformer}


class TokensToToken(nn.Module):
    """Image (B, C, H, W) -> tokens (B, (H/16)(W/16), embed_dim) by three soft splits and two token layers."""

    def __init__(self, tokens_type: str, in_chans: int, embed_dim: int, token_dim: int) -> None:
        super().__init__()
        if tokens_type not in TOKEN_LAYERS:
            raise PgoError(
                f"T2T-ViT tokens_type {tokens_type!r} is unknown; valid: {', '.join(TOKEN_LAYERS)}"
            )
        layer = TOKEN_LAYERS[tokens_type]
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.attention1 = layer(in_chans * 7 * 7, token_dim)
        self.attention2 = layer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    @staticmethod
    def _restructure(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Re-structurization: tokens (B, h*w, c) back to an image (B, c, h, w)."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = self.attention1(self.soft_split0(x).transpose(1, 2))  # grid H/4 x W/4
        x = self._restructure(x, height // 4, width // 4)
        x = self.attention2(self.soft_split1(x).transpose(1, 2))  # grid H/8 x W/8
        x = self._restructure(x, height // 8, width // 8)
        return self.project(self.soft_split2(x).transpose(1, 2))  # grid H/16 x W/16


def check_image_size(height: int, width: int, where: str) -> None:
    """Raise PgoError unless both sides are positive multiples of 16 (the T2T total stride)."""
    if height <= 0 or width <= 0 or height % TOTAL_STRIDE or width % TOTAL_STRIDE:
        raise PgoError(
            f"T2T-ViT image size {height}x{width} ({where}) is not valid: "
            f"height and width must be positive multiples of {TOTAL_STRIDE} (e.g. 64, 96, 224)"
        )


class T2TViT(nn.Module):
    """Tokens-to-token module, cls token + sinusoidal position embedding, ViT blocks, LayerNorm, head.

    forward(x (B, in_chans, H, W)) -> logits (B, num_classes), or features (B, embed_dim) when
    num_classes=0 (the cls token after the final norm).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        tokens_type: str = "performer",
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = False,
        token_dim: int = 64,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise PgoError(f"T2T-ViT global_pool {global_pool!r} is unknown; valid: token, avg")
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        check_image_size(height, width, "img_size")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False

        self.tokens_to_token = TokensToToken(tokens_type, in_chans, embed_dim, token_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        n_tokens = (height // TOTAL_STRIDE) * (width // TOTAL_STRIDE)
        # Not persistent: it is a function of the token count, so weights load at any image size.
        self.register_buffer(
            "pos_embed", sinusoid_position_embedding(n_tokens + 1, embed_dim), persistent=False
        )
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path = [
            drop_path_rate * i / max(depth - 1, 1) for i in range(depth)
        ]  # linear decay rule
        self.blocks = nn.Sequential(
            *(
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=drop_path[i],
                )
                for i in range(depth)
            )
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # timm model interface -------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # forward ----------------------------------------------------------------------------------
    def _position_embedding(self, n_tokens: int, like: torch.Tensor) -> torch.Tensor:
        if self.pos_embed.shape[1] == n_tokens:
            return self.pos_embed.to(like.dtype)
        table = sinusoid_position_embedding(n_tokens, self.embed_dim)
        return table.to(device=like.device, dtype=like.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W), H and W multiples of 16 -> tokens (B, 1 + HW/256, embed_dim), normed."""
        check_image_size(x.shape[-2], x.shape[-1], f"input of shape {tuple(x.shape)}")
        x = self.tokens_to_token(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self._position_embedding(x.shape[1], x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# timm registration ----------------------------------------------------------------------------
def _cfg(**kwargs) -> dict:
    """Pretrained cfg without any URL: weights come only from a local file (pretrained_cfg_overlay)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": None,  # the first layer is an unfold + linear, not a conv to adapt
        "classifier": "head",
        **kwargs,
    }


_VARIANTS = {
    # name: (tokens_type, embed_dim, depth, num_heads, mlp_ratio)
    "t2t_vit_7": ("performer", 256, 7, 4, 2.0),
    "t2t_vit_10": ("performer", 256, 10, 4, 2.0),
    "t2t_vit_12": ("performer", 256, 12, 4, 2.0),
    "t2t_vit_14": ("performer", 384, 14, 6, 3.0),
    "t2t_vit_19": ("performer", 448, 19, 7, 3.0),
    "t2t_vit_24": ("performer", 512, 24, 8, 3.0),
    "t2t_vit_t_14": ("transformer", 384, 14, 6, 3.0),
    "t2t_vit_t_19": ("transformer", 448, 19, 7, 3.0),
    "t2t_vit_t_24": ("transformer", 512, 24, 8, 3.0),
}

default_cfgs = generate_default_cfgs({name: _cfg() for name in _VARIANTS})


def _drop_position_embedding(state_dict: dict, model: nn.Module) -> dict:
    """Checkpoint filter: a stored pos_embed (official checkpoints keep one) is recomputed, not loaded."""
    return {k: v for k, v in state_dict.items() if k != "pos_embed"}


def _create(variant: str, pretrained: bool = False, **kwargs) -> T2TViT:
    tokens_type, embed_dim, depth, num_heads, mlp_ratio = _VARIANTS[variant]
    arch = dict(
        tokens_type=tokens_type,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
    )
    return build_model_with_cfg(
        T2TViT,
        variant,
        pretrained,
        pretrained_filter_fn=_drop_position_embedding,
        **{**arch, **kwargs},
    )


@register_model
def t2t_vit_7(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_7", pretrained, **kwargs)


@register_model
def t2t_vit_10(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_10", pretrained, **kwargs)


@register_model
def t2t_vit_12(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_12", pretrained, **kwargs)


@register_model
def t2t_vit_14(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_14", pretrained, **kwargs)


@register_model
def t2t_vit_19(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_19", pretrained, **kwargs)


@register_model
def t2t_vit_24(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_24", pretrained, **kwargs)


@register_model
def t2t_vit_t_14(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_t_14", pretrained, **kwargs)


@register_model
def t2t_vit_t_19(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_t_19", pretrained, **kwargs)


@register_model
def t2t_vit_t_24(pretrained: bool = False, **kwargs) -> T2TViT:
    return _create("t2t_vit_t_24", pretrained, **kwargs)
