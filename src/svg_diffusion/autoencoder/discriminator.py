"""PatchGAN discriminator (the pix2pix / taming-transformers ``NLayerDiscriminator``).

A stack of 4x4 convolutions: ``layers`` stride-2 ones (the first without a norm), one stride-1, and a 1-channel
stride-1 head; widths ndf·(1, 2, 4, 8, 8...). The output is a map of logits, one per overlapping patch.

Normalization: the public recipe uses BatchNorm, whose statistics come from each process's own batch (and from
real-only or fake-only batches), so the result depends on how the global batch is split over processes.
The default here is GroupNorm, which has no batch statistics: one process and N processes compute the same
thing. ``norm="batch"`` gives the public behaviour (convert it with ``nn.SyncBatchNorm`` for multi-GPU runs
if you want one set of statistics).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

DiscriminatorNorm = Literal["group", "batch"]


def _norm(kind: DiscriminatorNorm, channels: int) -> nn.Module:
    return nn.GroupNorm(32, channels) if kind == "group" else nn.BatchNorm2d(channels)


class PatchDiscriminator(nn.Module):
    """``PatchDiscriminator(layers=3, ndf=64)(images [B, 3, H, W]) -> logits [B, 1, h, w]``."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, layers: int = 3, norm: DiscriminatorNorm = "group"):
        super().__init__()
        if norm not in ("group", "batch"):
            raise ValueError(f"discriminator norm must be 'group' or 'batch', got {norm!r}")
        if layers < 1:
            raise ValueError(f"discriminator layers must be >= 1, got {layers}")
        # A norm with its own shift makes the conv bias redundant (as in the public code for BatchNorm).
        widths = [ndf * min(2**i, 8) for i in range(layers + 1)]
        modules: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            modules += [nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=False),
                        _norm(norm, widths[i]), nn.LeakyReLU(0.2)]
        modules.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*modules)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def _init_weights(module: nn.Module) -> None:
    """The DCGAN initialisation of the public code: conv N(0, 0.02), norm scale N(1, 0.02) and shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
