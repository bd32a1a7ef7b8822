"""The autoencoder's training objective: L1 + LPIPS + an adaptively weighted hinge PatchGAN (docs/autoencoder.md).

Generator (residual encoder + decoder) loss, per step:

    rec   = mean |x - x̂| · l1_weight + mean LPIPS(x, x̂) · lpips_weight
    gan   = -mean D(x̂)                                   (hinge generator loss)
    λ     = clamp(‖∇_W rec‖ / (‖∇_W gan‖ + 1e-4), 0, 1e4) · disc_weight   (W = decoder.conv_out.weight, no grad)
    total = rec + λ · gan                                 (gan term only from ``disc_start`` on)

Discriminator loss: ½ (mean relu(1 - D(x)) + mean relu(1 + D(x̂))).

The public code sums the per-pixel L1 + LPIPS over pixels and averages over images; that is our ``rec`` times
the constant 3·H·W, which Adam does not see (and λ is a ratio of gradient norms, so it absorbs the constant).
Under torch.distributed both gradients in λ are averaged over ranks first, so λ is that of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..training.distributed import all_reduce_
from ..utils.checks import check_int, check_number
from .discriminator import DiscriminatorNorm, PatchDiscriminator
from .lpips import LPIPS


@dataclass
class LossConfig:
    """Weights of the autoencoder objective; defaults are the paper's."""

    l1_weight: float = 1.0
    lpips_weight: float = 1.0
    disc_weight: float = 0.5  # multiplies the adaptive weight λ
    disc_start: int = 5001  # first step with the GAN terms (public config value)
    disc_layers: int = 3
    disc_channels: int = 64
    disc_norm: DiscriminatorNorm = "group"
    max_gan_weight: float = 1e4

    def __post_init__(self):
        for name in ("l1_weight", "lpips_weight", "disc_weight"):
            check_number(name, getattr(self, name), at_least=0)
        check_number("max_gan_weight", self.max_gan_weight, at_least=0)
        check_int("disc_start", self.disc_start, at_least=0)
        check_int("disc_layers", self.disc_layers, at_least=1)
        check_int("disc_channels", self.disc_channels, at_least=1)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """‖∇ rec‖ / (‖∇ gan‖ + eps) at ``last_layer``, clamped to [0, max_weight] and detached.

    Balances the two gradients where they meet the image; the graph is kept for the real backward pass.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = all_reduce_(rec_grad, "mean").norm() / (all_reduce_(gan_grad, "mean").norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


class AutoencoderLoss(nn.Module):
    """LPIPS (frozen) + PatchGAN discriminator (trained by its own optimizer) and the two losses.

    Usage in a training step::

        loss, logs = criterion.generator_loss(images, recon, model.decoder.last_layer, criterion.gan_active(step))
        ...backward, autoencoder optimizer step...
        if criterion.gan_active(step):
            d_loss, d_logs = criterion.discriminator_loss(images, recon)   # or pass a DDP-wrapped discriminator
    """

    def __init__(self, config: LossConfig, lpips: LPIPS | None = None):
        super().__init__()
        self.config = config
        self.lpips = lpips if lpips is not None else LPIPS()
        self.discriminator = PatchDiscriminator(ndf=config.disc_channels, layers=config.disc_layers,
                                                norm=config.disc_norm)

    def gan_active(self, step: int) -> bool:
        return step >= self.config.disc_start

    def reconstruction_loss(self, images: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
        l1 = (images - recon).abs().mean()
        perceptual = self.lpips(images, recon).mean()
        rec = self.config.l1_weight * l1 + self.config.lpips_weight * perceptual
        return {"l1": l1, "lpips": perceptual, "rec": rec}

    def generator_loss(self, images: torch.Tensor, recon: torch.Tensor, last_layer: torch.Tensor,
                       use_gan: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total generator loss and its detached parts. ``last_layer`` is the decoder's ``conv_out.weight``.

        The discriminator is applied with detached parameters: the generator loss sends gradients to the
        reconstruction only, never into the discriminator (so a DDP-wrapped discriminator is not involved).
        """
        parts = self.reconstruction_loss(images, recon)
        total = parts["rec"]
        if use_gan:
            frozen = {name: t.detach() for name, t in self.discriminator.state_dict(keep_vars=True).items()}
            gan = hinge_generator_loss(functional_call(self.discriminator, frozen, (recon,)))
            weight = self.config.disc_weight * adaptive_gan_weight(parts["rec"], gan, last_layer,
                                                                   self.config.max_gan_weight)
            total = total + weight * gan
            parts.update(gan=gan, gan_weight=weight)
        parts["total"] = total
        return total, {name: value.detach() for name, value in parts.items()}

    def discriminator_loss(self, images: torch.Tensor, recon: torch.Tensor,
                           discriminator: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge loss of the discriminator (``discriminator`` defaults to ours; pass its DDP wrapper if any)."""
        discriminator = discriminator if discriminator is not None else self.discriminator
        # Two passes as in the public code (with norm="batch", real and fake batches get their own statistics).
        logits_real = discriminator(images.detach())
        logits_fake = discriminator(recon.detach())
        loss = hinge_discriminator_loss(logits_real, logits_fake)
        return loss, {"disc_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                      "logits_fake": logits_fake.detach().mean()}
