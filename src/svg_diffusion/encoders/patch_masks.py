"""iBOT's masks: which patches of a global crop the student sees replaced by the mask token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def blob_masks(draws: Tensor, grid: int, probability: float, ratio: tuple[float, float]) -> Tensor:
    """iBOT masks [B, grid*grid] (True = masked) from uniform numbers [B, 2 + grid*grid].

    An image is masked with ``probability`` (draw 0), a fraction in ``ratio`` of its patches (draw 1).
    Which patches: the highest of the remaining random scores after a 3x3 box blur, so masks form blobs
    (like iBOT's block masks) rather than isolated patches that neighbours would give away.
    """
    batch = draws.shape[0]
    selected = draws[:, 0] < probability
    fraction = ratio[0] + (ratio[1] - ratio[0]) * draws[:, 1]
    count = torch.where(selected, (fraction * grid * grid).round(), torch.zeros_like(fraction))
    scores = F.avg_pool2d(draws[:, 2:].reshape(batch, 1, grid, grid), 3, stride=1, padding=1,
                          count_include_pad=False).flatten(1)
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return rank < count[:, None]
