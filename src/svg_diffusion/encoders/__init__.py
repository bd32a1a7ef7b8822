"""Frozen representation encoders: one ViT for DINOv3/DINOv2/plain models, named configs, weight formats.

    from svg_diffusion.encoders import load_encoder
    encoder = load_encoder("dinov3_vits16plus", weights="dinov3_vits16plus_pretrain_lvd1689m.pth")
    features = encoder(images)  # images [B,3,256,256] in [-1,1] -> [B,384,16,16]
"""

from .configs import ENCODER_CONFIGS, IMAGENET_MEAN, IMAGENET_STD, ViTConfig, get_config, swiglu_hidden_dim
from .formats import load_vit_state, read_weights
from .frozen import FrozenEncoder, load_encoder, load_vit, save_encoder
from .vit import VisionTransformer

__all__ = [
    "ENCODER_CONFIGS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FrozenEncoder",
    "ViTConfig",
    "VisionTransformer",
    "get_config",
    "load_encoder",
    "load_vit",
    "load_vit_state",
    "read_weights",
    "save_encoder",
    "swiglu_hidden_dim",
]
