"""The VAE baseline: a KL-regularized convolutional autoencoder (LDM's "KL-f4/f8" kind) with our decoder.

    images [-1, 1] ──► conv encoder ──► mean, logvar [B, C, h, w] ──► z = mean (+ std · noise in training) ──► decoder

It is what SVG replaces: a latent learned from pixels alone, kept near N(0, I) by a small KL term, instead of
frozen self-supervised features. Everything else is shared with :class:`SVGAutoencoder` so that comparisons
measure the latent only: the same :class:`Decoder` (and config), the same L1 + LPIPS (+ GAN) losses and
trainer (``train-autoencoder`` with ``model.kind: vae``), and the same interface (``encode``, ``decode``,
``latent_channels``, ``latent_size``, ``save_pretrained`` / ``from_pretrained``), so ``cache-latents``,
``train`` and ``SVGPipeline`` use a VAE folder unchanged (:func:`load_autoencoder` picks the class).

``encode`` returns the posterior MEAN: deterministic, and batch-independent (GroupNorm normalizes each image
on its own), as the latent cache and the diffusion statistics need. Sampling from the posterior happens
only in training, with noise the trainer draws from the step's generator (so resumes stay exact).

The encoder mirrors the decoder's config (LDM's ``Encoder``): conv_in, per level ``num_res_blocks``
ResnetBlocks (+ attention at ``attn_resolutions``) then a stride-2 conv (except at the last level), mid
(ResnetBlock, AttnBlock, ResnetBlock), GroupNorm, SiLU, conv_out to 2·C channels (mean, logvar).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SVGError
from ..utils.checks import check_int, check_number
from ..utils.pretrained import CONFIG_FILE, load_pretrained, read_json, write_pretrained
from ..utils.shipped import shipped_pipeline
from .decoder import AttnBlock, Decoder, DecoderConfig, ResnetBlock, group_norm
from .model import FORMAT as SVG_FORMAT
from .model import SVGAutoencoder

FORMAT = "svg-diffusion-vae"
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp: keeps exp(logvar) finite early in training


@dataclass
class VAEConfig:
    """Everything that defines the VAE baseline (``model:`` of a train-autoencoder config with ``kind: vae``).

    ``latent_channels``: C of the [C, h, w] latent (the decoder's ``z_channels``; h = image_size / 2^(levels-1)).
    ``kl_weight``: weight of the KL term, with LDM's meaning (their 1e-6): see :func:`kl_divergence`.
    """

    kind: Literal["vae"]  # required: it is what tells a VAE config from an SVG one
    image_size: int = 256
    latent_channels: int = 4
    kl_weight: float = 1e-6
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self):
        check_int("image_size", self.image_size, at_least=1)
        check_int("latent_channels", self.latent_channels, at_least=1)
        check_number("kl_weight", self.kl_weight, at_least=0)
        if self.decoder.z_channels != self.latent_channels:
            raise ValueError(f"decoder.z_channels is {self.decoder.z_channels}, latent_channels {self.latent_channels}")
        if self.decoder.resolution != self.image_size:
            raise ValueError(f"decoder.resolution is {self.decoder.resolution}, image_size {self.image_size}")


class VAEOutput(NamedTuple):
    recon: torch.Tensor  # [B, 3, H, W], unclamped
    latent: torch.Tensor  # [B, C, h, w]: the sampled z in training (noise given), else the mean
    kl: torch.Tensor  # scalar: kl_divergence of the posterior (before kl_weight)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor, image_elements: int) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over latent elements, averaged over images, / ``image_elements``.

    LDM adds ``kl_weight`` x (KL summed per image) to reconstruction losses summed over the 3·H·W pixel
    values; ours are means (losses.py), so the KL is divided by the same 3·H·W and ``kl_weight`` keeps
    LDM's meaning.
    """
    per_image = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
    return per_image.mean() / image_elements


class Downsample(nn.Module):
    """Stride-2 3x3 conv with LDM's asymmetric padding (one row/column after, none before)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class ConvEncoder(nn.Module):
    """Images [B, 3, R, R] -> mean and logvar [B, C, r, r]; the mirror of :class:`Decoder` (same config fields)."""

    def __init__(self, decoder: DecoderConfig, latent_channels: int):
        super().__init__()
        ch, levels = decoder.ch, len(decoder.ch_mult)
        self.conv_in = nn.Conv2d(decoder.out_ch, ch, kernel_size=3, padding=1)
        layers, width, resolution = [], ch, decoder.resolution
        for level, mult in enumerate(decoder.ch_mult):
            for _ in range(decoder.num_res_blocks):
                layers.append(ResnetBlock(width, ch * mult))
                width = ch * mult
                if resolution in decoder.attn_resolutions:
                    layers.append(AttnBlock(width))
            if level != levels - 1:
                layers.append(Downsample(width))
                resolution //= 2
        layers += [ResnetBlock(width, width), AttnBlock(width), ResnetBlock(width, width), group_norm(width), nn.SiLU(),
                   nn.Conv2d(width, 2 * latent_channels, kernel_size=3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.layers(self.conv_in(images)).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)


class KLAutoencoder(nn.Module):
    """The VAE baseline (see the module docstring). Saved as ``config.json`` + ``model.safetensors``."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = ConvEncoder(config.decoder, config.latent_channels)
        self.decoder = Decoder(config.decoder)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def latent_size(self) -> int:
        return self.config.decoder.latent_size

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (clamped) log-variance [B, C, h, w] of q(z | images)."""
        return self.encoder(images)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean [B, C, h, w] of images [B, 3, H, W] in [-1, 1]: deterministic, per image."""
        return self.posterior(images)[0]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] from latents, not clamped (the losses see raw values; pictures clamp)."""
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise SVGError(f"expected latents [B, {self.latent_channels}, h, w], got shape {tuple(latent.shape)}")
        return self.decoder(latent)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> VAEOutput:
        """Reconstruct through z = mean + exp(logvar / 2) · ``noise`` (N(0, I), [B, C, h, w]), or the mean without it."""
        mean, logvar = self.posterior(images)
        latent = mean if noise is None else mean + (0.5 * logvar).exp() * noise.to(mean.dtype)
        kl = kl_divergence(mean.float(), logvar.float(), images[0].numel())
        return VAEOutput(self.decode(latent), latent, kl)

    def _trained_modules(self) -> nn.ModuleDict:
        """Every module is trained (the trainer and the checkpoints see these, as for SVGAutoencoder)."""
        return nn.ModuleDict({"encoder": self.encoder, "decoder": self.decoder})

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``folder/config.json`` and ``folder/model.safetensors`` (atomically each)."""
        return write_pretrained(folder, FORMAT, self.config, self.state_dict())

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> KLAutoencoder:
        """Load a folder written by :meth:`save_pretrained` (on the CPU, in eval mode)."""
        return load_pretrained(cls, folder, FORMAT, VAEConfig, "the VAE")


Autoencoder = SVGAutoencoder | KLAutoencoder


def build_autoencoder(config) -> Autoencoder:
    """A new autoencoder of the kind ``config`` describes (an AutoencoderConfig or a VAEConfig)."""
    return KLAutoencoder(config) if isinstance(config, VAEConfig) else SVGAutoencoder.from_config(config)


def load_autoencoder(folder: str | Path) -> Autoencoder:
    """An SVG autoencoder or VAE folder, whichever its ``config.json`` says (eval mode, CPU).

    A pipeline folder (one with ``autoencoder/`` beside its ``model_index.json``) or a shipped pipeline's name
    (``demo-pipeline``) stands for its autoencoder.
    """
    folder = shipped_pipeline(folder)
    if not (Path(folder) / CONFIG_FILE).is_file() and (Path(folder) / "autoencoder" / CONFIG_FILE).is_file():
        folder = Path(folder) / "autoencoder"
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise SVGError(f"{folder} is not a saved autoencoder folder: {CONFIG_FILE} is missing")
    kinds = {SVG_FORMAT: SVGAutoencoder, FORMAT: KLAutoencoder}
    found = read_json(path).get("format")
    if found not in kinds:
        raise SVGError(f"{path}: expected format {' or '.join(map(repr, kinds))}, found {found!r}")
    return kinds[found].from_pretrained(folder)
