"""Distribution alignment: put the residual channels on the scale of the frozen encoder's features.

The residual branch has a few channels (8) next to many semantic ones (384). Left alone their scale is
arbitrary, and a diffusion model trained on the concatenation would spend its capacity on whichever part is
larger. Alignment standardizes the residual map with its own scalar mean/std and rescales it to the encoder
features' scalar mean/std (docs/autoencoder.md). The scalars follow the public code exactly (docs/official.md):

    mean = mean over channels of the per-channel means          (over batch and positions)
    std  = mean over channels of the per-channel unbiased stds  (not the global std)
    aligned = (residual - mean_res) / (std_res + 1e-6) * std_feat + mean_feat

The statistics carry no gradient (the public code detaches them). Modes:

- ``running`` (default): while training, the statistics of the current global batch are used (the public
  numerics) and tracked as a running average; in eval mode the tracked values are used, frozen, so a latent
  depends only on its own image.
- ``batch``: the public behaviour, the current batch's statistics also at inference.
- ``none``: the residual map is passed through unchanged.

Under torch.distributed, training statistics are computed over all ranks' images together, so one process
and N processes with the same global batch compute the same thing.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import SVGError
from ..training.distributed import all_reduce_

AlignmentMode = Literal["running", "batch", "none"]
ALIGNMENT_MODES = ("running", "batch", "none")


@torch.no_grad()
def scalar_statistics(x: torch.Tensor, across_ranks: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar (mean, std) of a map [B, C, ...]: channel averages of per-channel means and unbiased stds.

    Two passes (mean first, then squared deviations) in float32, so the result matches ``x.std(dim)``
    closely also for large offsets; with ``across_ranks`` each pass is summed over all ranks.
    """
    per_channel = x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)  # [C, B * positions]
    sums = torch.cat([per_channel.sum(dim=1), per_channel.new_tensor([per_channel.shape[1]])])
    if across_ranks:
        all_reduce_(sums)
    count = sums[-1]
    mean = sums[:-1] / count
    squared_deviations = (per_channel - mean[:, None]).square().sum(dim=1)
    if across_ranks:
        all_reduce_(squared_deviations)
    std = (squared_deviations / (count - 1)).sqrt()
    return mean.mean(), std.mean()


class DistributionAlignment(nn.Module):
    """Align a residual map [B, C_res, h, w] to the scalar statistics of encoder features [B, C_enc, h, w].

    Buffers (saved with the model): ``feature_mean``, ``feature_std``, ``residual_mean``, ``residual_std`` and
    ``num_batches_tracked``. ``momentum`` weights each new batch in the running average; ``None`` makes it a
    cumulative average of all batches seen (what :meth:`reset_statistics` + a pass over data estimates).
    """

    def __init__(self, mode: AlignmentMode = "running", momentum: float | None = 0.01, eps: float = 1e-6):
        super().__init__()
        if mode not in ALIGNMENT_MODES:
            raise ValueError(f"alignment mode must be one of {', '.join(ALIGNMENT_MODES)}, got {mode!r}")
        self.mode = mode
        self.momentum = momentum
        self.eps = eps
        for name in ("feature_mean", "feature_std", "residual_mean", "residual_std"):
            self.register_buffer(name, torch.zeros(()))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def reset_statistics(self) -> None:
        for buffer in self.buffers():
            buffer.zero_()

    @torch.no_grad()
    def update(self, features: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fold this batch's statistics into the running ones; returns the batch's four scalars."""
        batch = (*scalar_statistics(features, across_ranks=True), *scalar_statistics(residual, across_ranks=True))
        running = (self.feature_mean, self.feature_std, self.residual_mean, self.residual_std)
        seen = int(self.num_batches_tracked)
        # The first batch replaces the zero initialisation instead of being blended into it.
        weight = 1.0 if seen == 0 else (1.0 / (seen + 1) if self.momentum is None else self.momentum)
        for old, new in zip(running, batch):
            old.lerp_(new.to(old.dtype), weight)
        self.num_batches_tracked += 1
        return batch

    def statistics(self, features: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(feature_mean, feature_std, residual_mean, residual_std) to use for this call, by mode."""
        if self.mode == "running" and self.training:
            return self.update(features, residual)
        if self.mode == "running":
            if int(self.num_batches_tracked) == 0:
                raise SVGError("the autoencoder's alignment statistics were never estimated: train it, or call "
                               "estimate_alignment_statistics(images) first (or use alignment mode 'batch')")
            return self.feature_mean, self.feature_std, self.residual_mean, self.residual_std
        return (*scalar_statistics(features, across_ranks=self.training),
                *scalar_statistics(residual, across_ranks=self.training))

    def forward(self, features: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return residual
        feature_mean, feature_std, residual_mean, residual_std = self.statistics(features, residual)
        standardized = (residual - residual_mean.to(residual.dtype)) / (residual_std.to(residual.dtype) + self.eps)
        return standardized * feature_std.to(residual.dtype) + feature_mean.to(residual.dtype)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, momentum={self.momentum}, eps={self.eps}"
