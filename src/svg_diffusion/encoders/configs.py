"""Architectures of the Vision Transformers we build, as one dataclass, and the named ones.

A `ViTConfig` describes DINOv3-style models (RoPE, storage tokens, LayerScale, SwiGLU, masked k-bias),
DINOv2-style models (learned position table interpolated to the input grid, optional registers) and plain
ViTs (e.g. the autoencoder's residual encoder) with the same fields. The named configs reproduce Meta's
released models exactly (facebookresearch/dinov3 ``hub/backbones.py``, facebookresearch/dinov2 ``hub``),
so their ``.pth`` files load without renaming.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..errors import SVGError
from ..utils.checks import check_each, check_int, check_number

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def swiglu_hidden_dim(embed_dim: int, ffn_ratio: float, align_to: int = 8) -> int:
    """Meta's SwiGLU width: two thirds of ``embed_dim * ffn_ratio``, rounded up to a multiple of ``align_to``.

    The 2/3 keeps the parameter count of the three SwiGLU matrices equal to that of a two-matrix MLP.
    """
    width = int(int(embed_dim * ffn_ratio) * 2 / 3)
    return width + (-width % align_to)


@dataclass
class ViTConfig:
    """One Vision Transformer: its shape, its position encoding and the input normalization it expects."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 16
    # "mlp": fc2(GELU(fc1 x)); "swiglu": w3(SiLU(w1 x) * w2 x).
    ffn_layer: Literal["mlp", "swiglu"] = "mlp"
    # Hidden width of the FFN; None means 4 * embed_dim (MLP) or swiglu_hidden_dim(embed_dim, 4) (SwiGLU).
    ffn_hidden_dim: int | None = None
    qkv_bias: bool = True
    # DINOv3 stores a full qkv bias and a `bias_mask` buffer that zeroes its k third.
    mask_k_bias: bool = False
    proj_bias: bool = True
    ffn_bias: bool = True
    # LayerScale initial value (a learned per-channel gain on each residual branch); None disables it.
    layerscale_init: float | None = None
    norm_eps: float = 1e-6
    # Extra learned tokens after the class token: DINOv3 "storage" tokens / DINOv2 "registers".
    num_storage_tokens: int = 0
    # "rope": 2-D rotary embedding on patch tokens (DINOv3); "learned": a position table added to the
    # class and patch tokens, interpolated to the input grid (DINOv2, torchvision ViT).
    position: Literal["rope", "learned"] = "rope"
    rope_base: float = 100.0
    # How patch coordinates are scaled to [-1, 1]: per axis ("separate", DINOv3) or by max/min side.
    rope_normalize_coords: Literal["separate", "max", "min"] = "separate"
    # The training resolution; for "learned" it fixes the table's grid (image_size // patch_size)².
    image_size: int = 224
    # Resampling of the learned table to another grid. Meta's DINOv2 uses a scale factor of
    # (grid + 0.1) / table_grid without antialiasing; its register models and Hugging Face resample to
    # the exact size (offset 0), the register models with antialiasing.
    pos_embed_interp_offset: float = 0.0
    pos_embed_interp_antialias: bool = False
    # Per-channel normalization of [0, 1] images before the patch embedding.
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # "sdpa": F.scaled_dot_product_attention; "math": softmax(q k^T) v written out, which has a much
    # faster backward pass on CPU for small models. Both compute the same function.
    attn_impl: Literal["sdpa", "math"] = "sdpa"

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "image_size"):
            check_int(name, getattr(self, name), at_least=1)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.position == "rope" and self.head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {self.head_dim}")
        if self.mask_k_bias and not self.qkv_bias:
            raise ValueError("mask_k_bias needs qkv_bias")
        check_int("num_storage_tokens", self.num_storage_tokens, at_least=0)
        if self.layerscale_init is not None:  # None: no LayerScale
            check_number("layerscale_init", self.layerscale_init)
        check_number("norm_eps", self.norm_eps, above=0)
        check_number("rope_base", self.rope_base, above=0)
        check_number("pos_embed_interp_offset", self.pos_embed_interp_offset)
        if self.ffn_hidden_dim is None:
            mlp = self.ffn_layer == "mlp"
            self.ffn_hidden_dim = 4 * self.embed_dim if mlp else swiglu_hidden_dim(self.embed_dim, 4)
        check_int("ffn_hidden_dim", self.ffn_hidden_dim, at_least=1)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"image_mean/image_std must be 3 values each; got {self.image_mean}, {self.image_std}")
        check_each(check_number, "image_mean", self.image_mean)
        check_each(check_number, "image_std", self.image_std, above=0)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the class token and the storage tokens."""
        return 1 + self.num_storage_tokens


def _dinov3(embed_dim: int, depth: int, num_heads: int, ffn_layer: str = "mlp", ffn_ratio: float = 4.0) -> ViTConfig:
    # Every released DINOv3 ViT: patch 16, RoPE base 100 with per-axis coordinates, 4 storage tokens,
    # LayerScale, LayerNorm eps 1e-5 ("layernormbf16") and the masked k-bias.
    hidden = int(embed_dim * ffn_ratio) if ffn_layer == "mlp" else swiglu_hidden_dim(embed_dim, ffn_ratio)
    return ViTConfig(
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=16, ffn_layer=ffn_layer,
        ffn_hidden_dim=hidden, mask_k_bias=True, layerscale_init=1e-5, norm_eps=1e-5, num_storage_tokens=4,
        position="rope", rope_base=100.0, rope_normalize_coords="separate", image_size=224,
    )


def _dinov2(embed_dim: int, depth: int, num_heads: int, registers: bool) -> ViTConfig:
    # Released DINOv2 ViTs: patch 14, a 37x37 position table (518 px), LayerScale, eps 1e-6. The plain
    # models resample the table with Meta's +0.1 scale-factor kludge; the register models by exact size
    # with antialiasing (dinov2 hub/backbones.py).
    return ViTConfig(
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=14, ffn_layer="mlp",
        ffn_hidden_dim=4 * embed_dim, layerscale_init=1e-5, norm_eps=1e-6,
        num_storage_tokens=4 if registers else 0, position="learned", image_size=518,
        pos_embed_interp_offset=0.0 if registers else 0.1, pos_embed_interp_antialias=registers,
    )


ENCODER_CONFIGS: dict[str, ViTConfig] = {
    "dinov3_vits16": _dinov3(384, 12, 6),
    "dinov3_vits16plus": _dinov3(384, 12, 6, ffn_layer="swiglu", ffn_ratio=6.0),
    "dinov3_vitb16": _dinov3(768, 12, 12),
    "dinov3_vitl16": _dinov3(1024, 24, 16),
    "dinov2_vits14": _dinov2(384, 12, 6, registers=False),
    "dinov2_vits14_reg": _dinov2(384, 12, 6, registers=True),
    "dinov2_vitb14": _dinov2(768, 12, 12, registers=False),
    "dinov2_vitb14_reg": _dinov2(768, 12, 12, registers=True),
    # For tests: every DINOv3 feature at a size that runs in milliseconds.
    "tiny": ViTConfig(
        embed_dim=64, depth=2, num_heads=4, patch_size=4, mask_k_bias=True, layerscale_init=1e-5,
        norm_eps=1e-5, num_storage_tokens=2, image_size=32,
    ),
    # The Fashion-MNIST 32x32 demo encoder (8x8 tokens), pretrained by this project's self-distillation.
    "demo": ViTConfig(
        embed_dim=128, depth=6, num_heads=4, patch_size=4, mask_k_bias=True, layerscale_init=1e-5,
        norm_eps=1e-5, num_storage_tokens=4, image_size=32,
    ),
}


def get_config(name: str) -> ViTConfig:
    """A fresh copy of the named config (so callers may change fields without touching the table)."""
    if name not in ENCODER_CONFIGS:
        raise SVGError(f"unknown encoder {name!r} (known: {', '.join(ENCODER_CONFIGS)})")
    return dataclasses.replace(ENCODER_CONFIGS[name])
