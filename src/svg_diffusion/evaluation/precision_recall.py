"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) with k-nearest-neighbour manifolds.

Each feature set approximates its manifold by the union of balls around its points, the radius of a point
being the distance to its k-th nearest neighbour within the same set (k = 3, the paper's choice; the point
itself is not counted). Then

- precision = fraction of generated points inside the real manifold (are samples realistic?),
- recall    = fraction of real points inside the generated manifold (is the real variety covered?).

Distances are Euclidean, computed in float32 in blocks so 50k x 50k comparisons fit in memory. Both sets
should have about the same size: the radii, and hence both numbers, depend on the sample count.
"""

from __future__ import annotations

import torch

from ..errors import SVGError

NEIGHBOURS = 3


def _kth_neighbour_radii(points: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point of the same set."""
    radii = []
    for start in range(0, len(points), block):
        distances = torch.cdist(points[start:start + block], points)
        # The k+1 smallest include the point itself at distance 0.
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _fraction_inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    """Fraction of ``queries`` within radius[j] of some centre j."""
    inside = 0
    for start in range(0, len(queries), block):
        distances = torch.cdist(queries[start:start + block], centres)
        inside += (distances <= radii[None, :]).any(dim=1).sum().item()
    return inside / len(queries)


@torch.no_grad()
def precision_recall(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = NEIGHBOURS, block: int = 1024
) -> tuple[float, float]:
    """(precision, recall) of generated features against real ones, both [N, D] (e.g. Inception features)."""
    real, fake = real_features.float(), fake_features.float()
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise SVGError(f"precision/recall need features [N, D] of one D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if k < 1:
        raise SVGError(f"precision/recall need k >= 1 neighbours, got {k}")
    if min(len(real), len(fake)) <= k:
        raise SVGError(f"precision/recall with k={k} need more than {k} samples per set, got {len(real)} and {len(fake)}")
    real_radii = _kth_neighbour_radii(real, k, block)
    fake_radii = _kth_neighbour_radii(fake, k, block)
    precision = _fraction_inside(fake, real, real_radii, block)
    recall = _fraction_inside(real, fake, fake_radii, block)
    return precision, recall
