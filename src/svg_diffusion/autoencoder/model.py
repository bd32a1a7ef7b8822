"""SVGAutoencoder: frozen encoder features + an aligned residual map as the latent, a conv decoder back to pixels.

    images [-1, 1] ──► frozen encoder ─────────────────────────────► features [B, C_enc, h, w] ─┐
                   └─► residual encoder ─► (mask token) ─► alignment ─► residual [B, C_res, h, w] ─┴► latent
    latent [B, C_enc + C_res, h, w] ──► decoder ──► images (unclamped; clamp to [-1, 1] for pictures)

Only the residual encoder (with its mask token) and the decoder are trained. With ``residual.channels: 0``
the latent is the frozen features alone (the paper's encoder-only ablation).

Saved as a folder: ``config.json`` + ``model.safetensors`` (residual encoder, decoder, alignment statistics)
+ ``encoder/`` (the frozen encoder in the encoders' own folder format), so it loads with nothing else; or,
to ship one encoder beside several models, ``config.json`` may name an existing encoder folder instead
(``"encoder_folder"``, relative to the autoencoder's folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..config import ConfigPath, PathOrName
from ..encoders import FrozenEncoder, load_encoder, save_encoder
from ..errors import SVGError
from ..utils.checks import check_int, check_number
from ..utils.pretrained import (
    load_state_dict_strict, read_pretrained_config, read_pretrained_state, same_state, stored_state, write_pretrained,
)
from .alignment import AlignmentMode, DistributionAlignment
from .decoder import Decoder, DecoderConfig
from .residual import ResidualEncoder, ResidualEncoderConfig

FORMAT = "svg-diffusion-autoencoder"
ENCODER_FOLDER = "encoder"


@dataclass
class AutoencoderConfig:
    """Everything that defines an SVG autoencoder. Defaults are the paper's ImageNet-256 model."""

    encoder: PathOrName = "dinov3_vits16plus"  # name or folder for load_encoder (used by from_config only)
    encoder_weights: ConfigPath | None = None
    encoder_layer: int | None = None  # 1-based block whose output is used; None: the last
    image_size: int = 256
    residual: ResidualEncoderConfig = field(default_factory=ResidualEncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    alignment: AlignmentMode = "running"
    alignment_momentum: float | None = 0.01  # weight of each batch in the running statistics; None: cumulative
    mask_prob: float = 0.1  # probability that a training sample's residual map is replaced by the mask token

    def __post_init__(self):
        if self.encoder_layer is not None:
            check_int("encoder_layer", self.encoder_layer, at_least=1)
        check_int("image_size", self.image_size, at_least=1)
        check_number("mask_prob", self.mask_prob, at_least=0, below=1)
        if self.alignment_momentum is not None:  # null: cumulative statistics
            check_number("alignment_momentum", self.alignment_momentum, above=0, at_most=1)


class AutoencoderOutput(NamedTuple):
    recon: torch.Tensor  # [B, 3, H, W], unclamped
    latent: torch.Tensor  # [B, C_enc + C_res, h, w]


class SVGAutoencoder(nn.Module):
    """The SVG autoencoder around a given frozen encoder (see the module docstring)."""

    def __init__(self, config: AutoencoderConfig, encoder: FrozenEncoder):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self._check_shapes(config, encoder)
        if config.residual.channels > 0:
            self.residual = ResidualEncoder(config.residual, encoder.patch_size, config.image_size)
            self.alignment = DistributionAlignment(config.alignment, config.alignment_momentum)
        else:
            self.residual = self.alignment = None
        self.decoder = Decoder(config.decoder)

    @staticmethod
    def _check_shapes(config: AutoencoderConfig, encoder: FrozenEncoder) -> None:
        latent_channels = encoder.embed_dim + config.residual.channels
        grid, remainder = divmod(config.image_size, encoder.patch_size)
        dec = config.decoder
        problems = []
        if remainder:
            problems.append(f"image_size {config.image_size} is not a multiple of the patch size {encoder.patch_size}")
        if dec.z_channels != latent_channels:
            problems.append(f"decoder.z_channels is {dec.z_channels} but the latent has {encoder.embed_dim} "
                            f"encoder + {config.residual.channels} residual = {latent_channels} channels")
        if dec.resolution != config.image_size or dec.latent_size != grid:
            problems.append(f"the decoder maps {dec.latent_size}² latents to {dec.resolution}² images, but "
                            f"{config.image_size}² images give {grid}² latents")
        if encoder.layer != config.encoder_layer:
            problems.append(f"the encoder reads layer {encoder.layer}, the config says {config.encoder_layer}")
        if problems:
            raise SVGError("autoencoder config does not fit its encoder: " + "; ".join(problems))

    @classmethod
    def from_config(cls, config: AutoencoderConfig) -> SVGAutoencoder:
        """A new autoencoder whose frozen encoder is loaded from ``config.encoder`` / ``encoder_weights``."""
        return cls(config, load_encoder(config.encoder, config.encoder_weights, config.encoder_layer))

    # ------------------------------------------------------------------------------------------ shapes

    @property
    def latent_channels(self) -> int:
        return self.encoder.embed_dim + self.config.residual.channels

    @property
    def latent_size(self) -> int:
        return self.config.image_size // self.encoder.patch_size

    # ----------------------------------------------------------------------------------- encode/decode

    def draw_residual_mask(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Which samples get the mask token this step: bool [batch_size], drawn from ``generator``.

        Trainers draw it for the global batch from the step's generator and slice their rank's part, so
        the decision does not depend on how the batch is split over processes.
        """
        return torch.rand(batch_size, generator=generator, device=generator.device) < self.config.mask_prob

    def encode(self, images: torch.Tensor, residual_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Latent [B, C_enc + C_res, h, w] (encoder features first) of images [B, 3, H, W] in [-1, 1].

        ``residual_mask`` (bool [B], training only) replaces those samples' residual maps by the mask token.
        """
        features = self.encoder(images)
        if self.residual is None:
            return features
        residual = self.alignment(features, self.residual(images, residual_mask))
        return torch.cat([features, residual.to(features.dtype)], dim=1)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] from latents, not clamped (the losses see raw values; pictures clamp)."""
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise SVGError(f"expected latents [B, {self.latent_channels}, h, w], got shape {tuple(latent.shape)}")
        return self.decoder(latent)

    def forward(self, images: torch.Tensor, residual_mask: torch.Tensor | None = None) -> AutoencoderOutput:
        latent = self.encode(images, residual_mask)
        return AutoencoderOutput(self.decode(latent), latent)

    @torch.no_grad()
    def estimate_alignment_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Set the running alignment statistics to the average over ``batches`` of images in [-1, 1].

        For a model converted without statistics, or to replace the training-time running average by one
        over a fixed set of images. Under torch.distributed every rank must pass the same number of batches.
        """
        if self.alignment is None:
            return
        self.alignment.reset_statistics()
        momentum, self.alignment.momentum = self.alignment.momentum, None  # None: a cumulative average
        try:
            for images in batches:
                self.alignment.update(self.encoder(images), self.residual(images))
        finally:
            self.alignment.momentum = momentum

    # ---------------------------------------------------------------------------------------- save/load

    def _trained_modules(self) -> nn.ModuleDict:
        """What model.safetensors holds: every module but the frozen encoder, under the same key names."""
        modules = {"residual": self.residual, "alignment": self.alignment, "decoder": self.decoder}
        return nn.ModuleDict({name: module for name, module in modules.items() if module is not None})

    def save_pretrained(self, folder: str | Path, parameter_dtype: torch.dtype | None = None,
                        encoder_folder: str | Path | None = None) -> Path:
        """Write ``folder/config.json``, ``folder/model.safetensors`` and ``folder/encoder/`` (atomically each).

        ``parameter_dtype``: store the trained parameters at that precision (see ``utils.pretrained.stored_state``;
        the frozen encoder is written as it is). ``encoder_folder``: an existing encoder folder holding exactly
        this model's frozen encoder, to refer to instead of writing a copy (stored relative to ``folder``: move
        the two together).
        """
        folder = Path(folder)
        state = stored_state(self._trained_modules(), parameter_dtype)
        if encoder_folder is None:
            save_encoder(self.encoder, folder / ENCODER_FOLDER)
            return write_pretrained(folder, FORMAT, self.config, state)
        shared = load_encoder(encoder_folder).vit.state_dict()
        own = self.encoder.vit.state_dict()
        if not same_state(own, shared):
            raise SVGError(f"{encoder_folder} does not hold this autoencoder's frozen encoder")
        relative = os.path.relpath(Path(encoder_folder).resolve(), folder.resolve())
        return write_pretrained(folder, FORMAT, self.config, state, encoder_folder=relative)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> SVGAutoencoder:
        """Load a folder written by :meth:`save_pretrained` (on the CPU, in eval mode)."""
        config, meta = read_pretrained_config(folder, FORMAT, AutoencoderConfig)
        encoder_folder = Path(folder) / meta.get("encoder_folder", ENCODER_FOLDER)
        model = cls(config, load_encoder(encoder_folder, layer=config.encoder_layer))
        # The strict loader names every missing, unexpected or misshapen key.
        load_state_dict_strict(model._trained_modules(), read_pretrained_state(folder), str(folder), "the autoencoder")
        return model.eval()
