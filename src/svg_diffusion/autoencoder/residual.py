"""The residual encoder: a small trainable ViT that adds the fine detail the frozen encoder's features lack.

It sees the image normalized as the frozen encoder sees it (ImageNet mean/std) and outputs a few channels per patch:

    patch tokens of a plain ViT (class token prepended and dropped, learned positions, LayerNorm eps 1e-6,
    exact GELU, no LayerScale, no registers) -> Linear(width, width) -> GELU -> Linear(width, channels)

This is the public code's torchvision ``VisionTransformer`` (patch 16, 6 layers, width 384, 8 heads,
MLP 1536) expressed through our one ViT class. During training, whole residual maps of chosen samples are
replaced by a learned mask token (probability 0.1 in the paper), so the decoder learns to work from the
frozen features alone and does not let the residual take over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..encoders.configs import ViTConfig
from ..encoders.vit import VisionTransformer
from ..utils.checks import check_int


@dataclass
class ResidualEncoderConfig:
    """Shape of the residual ViT; ``channels: 0`` removes the branch (the encoder-only ablation)."""

    channels: int = 8
    depth: int = 6
    width: int = 384
    num_heads: int = 8
    mlp_dim: int = 1536

    def __post_init__(self):
        check_int("channels", self.channels, at_least=0)  # 0: no residual branch
        for name in ("depth", "width", "num_heads", "mlp_dim"):
            check_int(name, getattr(self, name), at_least=1)
        if self.width % self.num_heads:
            raise ValueError(f"residual width {self.width} is not divisible by num_heads {self.num_heads}")

    def vit_config(self, patch_size: int, image_size: int) -> ViTConfig:
        """The ViTConfig of a torchvision-style ViT with this shape (positions learned for ``image_size``)."""
        return ViTConfig(
            embed_dim=self.width, depth=self.depth, num_heads=self.num_heads, patch_size=patch_size,
            ffn_layer="mlp", ffn_hidden_dim=self.mlp_dim, layerscale_init=None, norm_eps=1e-6,
            num_storage_tokens=0, position="learned", image_size=image_size,
        )


class ResidualEncoder(nn.Module):
    """``ResidualEncoder(cfg, patch_size, image_size)(images [-1, 1], mask) -> [B, channels, H/p, W/p]``."""

    def __init__(self, config: ResidualEncoderConfig, patch_size: int, image_size: int):
        super().__init__()
        self.config = config
        vit_config = config.vit_config(patch_size, image_size)
        self.vit = VisionTransformer(vit_config)
        # [-1, 1] -> [0, 1] -> ImageNet mean/std: (x + 1) / 2 folded into one affine map per channel.
        mean, std = torch.tensor(vit_config.image_mean), torch.tensor(vit_config.image_std)
        self.register_buffer("input_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        self.head = nn.Sequential(
            nn.Linear(config.width, config.width), nn.GELU(), nn.Linear(config.width, config.channels)
        )
        # One token for the whole map (broadcast over positions), initialised as in the public code.
        self.mask_token = nn.Parameter(torch.randn(1, config.channels, 1, 1) * 0.02)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Residual map of images in [-1, 1]; ``mask`` (bool [B]) replaces the chosen samples' maps.

        The token goes through ``torch.where`` even when no sample is masked (``mask`` None or all False), so
        distributed training always sees a (zero) gradient for it and needs no find_unused_parameters.
        """
        batch, _, height, width = images.shape
        patch = self.vit.patch_size
        tokens = self.vit.forward_features(images * self.input_scale + self.input_shift)["x_norm_patchtokens"]
        residual = self.head(tokens).transpose(1, 2).reshape(batch, -1, height // patch, width // patch)
        if mask is None:
            mask = torch.zeros(batch, dtype=torch.bool, device=residual.device)
        if mask.shape != (batch,) or mask.dtype != torch.bool:
            raise ValueError(f"residual mask must be bool [{batch}], got {mask.dtype} {tuple(mask.shape)}")
        return torch.where(mask.to(residual.device)[:, None, None, None], self.mask_token.to(residual.dtype), residual)
