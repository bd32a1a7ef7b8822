"""The SVG autoencoder: frozen encoder + residual ViT + distribution alignment, LDM conv decoder, losses.

    from svg_diffusion.autoencoder import AutoencoderConfig, SVGAutoencoder
    model = SVGAutoencoder.from_config(AutoencoderConfig(...))        # or SVGAutoencoder(config, encoder)
    latent = model.encode(images)                                     # [B, C_enc + C_res, h, w]
    recon = model.decode(latent).clamp(-1, 1)

The VAE baseline (``vae.py``): ``KLAutoencoder(VAEConfig(kind="vae", ...))``, same interface and folder use;
``load_autoencoder(folder)`` loads either kind.

Training: ``svg_diffusion.trainers.autoencoder`` (``train_autoencoder``; the train-autoencoder command).
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
from .vae import Autoencoder, KLAutoencoder, VAEConfig, build_autoencoder, kl_divergence, load_autoencoder

__all__ = [
    "ALIGNMENT_MODES",
    "LPIPS",
    "Autoencoder",
    "AutoencoderConfig",
    "AutoencoderLoss",
    "AutoencoderOutput",
    "Decoder",
    "DecoderConfig",
    "DistributionAlignment",
    "KLAutoencoder",
    "LossConfig",
    "PatchDiscriminator",
    "ResidualEncoder",
    "ResidualEncoderConfig",
    "SVGAutoencoder",
    "VAEConfig",
    "adaptive_gan_weight",
    "build_autoencoder",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "kl_divergence",
    "load_autoencoder",
    "load_numpy_pickle",
    "scalar_statistics",
]
