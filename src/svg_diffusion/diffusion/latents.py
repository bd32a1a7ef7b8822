"""Latent statistics: the per-channel mean and std that put latents on the scale the transformer sees.

SVG latents are raw encoder features (plus the aligned residual): channels differ in offset and scale, so
the transformer is trained on ``(z - mean) / std`` per channel (SPEC §2) and its samples are mapped back
with the inverse before decoding. The statistics are computed once over the training set and stored with
the model (``latent_stats.safetensors`` in a pipeline folder), so training and sampling use the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import SVGError
from ..utils.files import atomic_path
from ..utils.pretrained import read_state_file

FORMAT = "svg-diffusion-latent-stats"


@dataclass
class LatentStatistics:
    """Per-channel ``mean`` and ``std`` (float32 [C]) of latents [B, C, h, w]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).flatten()
        self.std = torch.as_tensor(self.std, dtype=torch.float32).flatten()
        if self.mean.shape != self.std.shape:
            raise SVGError(f"latent statistics: mean has {self.mean.numel()} channels, std {self.std.numel()}")
        if not bool((self.std > 0).all()) or not bool(torch.isfinite(self.mean).all()):
            raise SVGError("latent statistics: every std must be positive and every mean finite")

    @property
    def channels(self) -> int:
        return self.mean.numel()

    def _broadcast(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise SVGError(f"expected latents [B, {self.channels}, h, w], got shape {tuple(z.shape)}")
        shape = (1, self.channels, 1, 1)
        return self.mean.to(z.device).view(shape), self.std.to(z.device).view(shape)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """``(z - mean) / std`` per channel, in float32: what the transformer is trained on."""
        mean, std = self._broadcast(z)
        return (z.float() - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """``z * std + mean`` per channel, in float32: what the autoencoder's decoder takes."""
        mean, std = self._broadcast(z)
        return z.float() * std + mean

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({"mean": self.mean.contiguous(), "std": self.std.contiguous()}, str(tmp),
                      metadata={"format": FORMAT})
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatentStatistics:
        state = read_state_file(path)
        if set(state) != {"mean", "std"}:
            raise SVGError(f"{path}: expected latent statistics with tensors 'mean' and 'std', found {sorted(state)}")
        return cls(state["mean"], state["std"])
