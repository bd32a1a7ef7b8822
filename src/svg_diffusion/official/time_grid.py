"""The public sampler's time grid, to reproduce its samples exactly (docs/official.md, "Time grid")."""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.checks import check_int, check_number


def public_time_grid(num_steps: int, public_shift: float) -> Tensor:
    """The public sampler's time grid: ``linspace(0, 1, N + 1)`` in float32, each point shifted in float64 as
    ``s t / (1 + (s - 1) t)`` (public ``s``; our ``k`` = 1 / s), then float32.

    Our :func:`~svg_diffusion.diffusion.time_grid` takes the linspace in float64; the two differ by at most
    one float32 ulp per point. Pass this grid to a sampler to reproduce the public one exactly.
    """
    check_int("num_steps", num_steps, at_least=1)
    check_number("public_shift", public_shift, above=0)
    t = torch.linspace(0, 1, num_steps + 1, dtype=torch.float32).double()
    return (public_shift * t / (1 + (public_shift - 1) * t)).float()
