"""The frozen representation encoder of SVG, and building/saving ViTs from names, folders and weight files.

`FrozenEncoder` turns images in [-1, 1] into the encoder's patch tokens after the final norm, as a feature
map [B, C, H/p, W/p]. It can never be trained: it stays in eval mode whatever ``.train()`` is called on it or
on a parent, its parameters never require gradients (so DDP of a parent needs no find_unused_parameters and
an optimizer over ``requires_grad`` parameters never holds them), and it runs under ``torch.no_grad`` (not
``inference_mode``, whose tensors could not be saved for the backward pass of a trainable module that
consumes the features).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import SVGError
from ..utils.shipped import SHIPPED_ENCODERS, shipped_encoder
from .configs import ENCODER_CONFIGS, ViTConfig, get_config
from .formats import load_vit_state, read_folder, read_weights, write_folder
from .vit import VisionTransformer

# Architecture fields that a weights folder must share with the encoder name it is loaded for.
_ARCHITECTURE_FIELDS = (
    "embed_dim", "depth", "num_heads", "patch_size", "ffn_layer", "ffn_hidden_dim", "num_storage_tokens", "position",
)


class FrozenEncoder(nn.Module):
    """A ViT used as a fixed feature extractor: images [B,3,H,W] in [-1,1] -> patch features [B,C,H/p,W/p].

    ``layer`` (1-based) takes an earlier block's output (then the final norm), for the paper's layer ablation.
    """

    def __init__(self, vit: VisionTransformer, layer: int | None = None):
        super().__init__()
        if layer is not None and not 1 <= layer <= vit.config.depth:
            raise SVGError(f"layer {layer} is out of range: this encoder has blocks 1..{vit.config.depth}")
        self.vit = vit.requires_grad_(False)
        self.layer = layer
        cfg = vit.config
        # [-1, 1] -> [0, 1] -> (x - mean) / std, folded into one affine map: x * scale + shift.
        mean, std = torch.tensor(cfg.image_mean), torch.tensor(cfg.image_std)
        self.register_buffer("scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        super().train(False)

    @property
    def config(self) -> ViTConfig:
        return self.vit.config

    @property
    def embed_dim(self) -> int:
        return self.vit.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.vit.config.patch_size

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Stays in eval mode: a frozen encoder has no training behaviour to switch on."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise SVGError(f"expected images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
        batch, _, height, width = images.shape
        with torch.no_grad():
            tokens = self.vit.forward_features(images * self.scale + self.shift, layer=self.layer)["x_norm_patchtokens"]
        p = self.patch_size
        return tokens.transpose(1, 2).reshape(batch, self.embed_dim, height // p, width // p)


def load_vit(name_or_dir: str | Path, weights: str | Path | None = None) -> VisionTransformer:
    """A (trainable) VisionTransformer from a shipped encoder's name (``demo-pretrained``), a folder (ours or
    Hugging Face) or an architecture name, with weights.

    ``weights``: Meta ``.pth``; a Hugging Face folder or ``.safetensors``; our folder. A folder's own config
    must agree with the named architecture. With an architecture name and no weights the model is randomly
    initialized (with a warning: features of a random encoder are meaningless for SVG).
    """
    name_or_dir = shipped_encoder(name_or_dir)
    source = Path(name_or_dir)
    if source.is_dir():
        (cfg, state), origin = read_folder(source), str(source)
    elif str(name_or_dir) in ENCODER_CONFIGS:
        cfg, state, origin = get_config(str(name_or_dir)), None, str(name_or_dir)
    else:
        raise SVGError(f"unknown encoder {str(name_or_dir)!r}: not a folder, nor one of "
                       f"{', '.join([*SHIPPED_ENCODERS, *ENCODER_CONFIGS])}")
    if weights is not None:
        weights_cfg, state = read_weights(weights, cfg)
        _check_same_architecture(cfg, weights_cfg, origin, weights)
        cfg, origin = weights_cfg, str(weights)
    model = VisionTransformer(cfg)
    if state is None:
        warnings.warn(f"encoder {origin!r} has no weights: using a random initialization", stacklevel=2)
    else:
        load_vit_state(model, state, origin)
    return model


def load_encoder(name_or_dir: str | Path, weights: str | Path | None = None, layer: int | None = None) -> FrozenEncoder:
    """The frozen encoder ``name_or_dir`` (see `load_vit`) reading block ``layer`` (1-based; None: the last)."""
    return FrozenEncoder(load_vit(name_or_dir, weights), layer=layer)


def save_encoder(model: VisionTransformer | FrozenEncoder, folder: str | Path) -> Path:
    """Write our format: ``folder/config.json`` (the ViTConfig) + ``folder/model.safetensors``."""
    vit = model.vit if isinstance(model, FrozenEncoder) else model
    return write_folder(vit, folder)


def _check_same_architecture(cfg: ViTConfig, weights_cfg: ViTConfig, origin: str, weights: str | Path) -> None:
    differences = [
        f"{name} {getattr(weights_cfg, name)} (expected {getattr(cfg, name)})"
        for name in _ARCHITECTURE_FIELDS
        if getattr(weights_cfg, name) != getattr(cfg, name)
    ]
    if differences:
        raise SVGError(f"weights {weights} do not hold a {origin} encoder: " + ", ".join(differences))
