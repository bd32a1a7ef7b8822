"""The public latent statistics ``dinov3_sp_stats.pt``: per-channel mean/std [1, 1, C'] of the token layout."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..diffusion.latents import LatentStatistics
from ..errors import SVGError
from .files import load_public_file

PUBLIC_STATS_KEYS = ("dinov3_sp_mean", "dinov3_sp_std")


def read_public_stats(path: str | Path, channels: int, trust_pickle: bool = False) -> LatentStatistics:
    """``dinov3_sp_stats.pt`` as LatentStatistics of its first ``channels`` channels (as the public code slices)."""
    data = load_public_file(path, "statistics file", trust_pickle)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), Tensor) for k in PUBLIC_STATS_KEYS):
        raise SVGError(f"{path}: expected a dict with tensors {' and '.join(PUBLIC_STATS_KEYS)}")
    mean, std = (data[k].float().flatten() for k in PUBLIC_STATS_KEYS)
    if min(mean.numel(), std.numel()) < channels:
        raise SVGError(f"{path}: statistics of {min(mean.numel(), std.numel())} channels for a "
                       f"{channels}-channel latent")
    return LatentStatistics(mean[:channels], std[:channels])
