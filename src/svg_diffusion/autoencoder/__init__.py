"""The SVG autoencoder: frozen encoder + residual ViT + distribution alignment, LDM conv decoder, losses.

    from svg_diffusion.autoencoder import AutoencoderConfig, SVGAutoencoder
    model = SVGAutoencoder.from_config(AutoencoderConfig(...))        # or SVGAutoencoder(config, encoder)
    latent = model.encode(images)                                     # [B, C_enc + C_res, h, w]
    recon = model.decode(latent).clamp(-1, 1)

Training: ``svg_diffusion.autoencoder.train`` (``train_autoencoder``; the train-autoencoder command).
"""

from .alignment import ALIGNMENT_MODES, DistributionAlignment, scalar_statistics
from .decoder import Decoder, DecoderConfig
from .discriminator import PatchDiscriminator
from .losses import (
    AutoencoderLoss,
    LossConfig,
    adaptive_gan_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from .lpips import LPIPS, load_numpy_pickle
from .model import AutoencoderConfig, AutoencoderOutput, SVGAutoencoder
from .residual import ResidualEncoder, ResidualEncoderConfig

__all__ = [
    "ALIGNMENT_MODES",
    "LPIPS",
    "AutoencoderConfig",
    "AutoencoderLoss",
    "AutoencoderOutput",
    "Decoder",
    "DecoderConfig",
    "DistributionAlignment",
    "LossConfig",
    "PatchDiscriminator",
    "ResidualEncoder",
    "ResidualEncoderConfig",
    "SVGAutoencoder",
    "adaptive_gan_weight",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "load_numpy_pickle",
    "scalar_statistics",
]
