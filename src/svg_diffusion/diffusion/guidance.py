"""Classifier-free guidance: turn a class-conditional model into the ``velocity_fn`` the samplers integrate.

    v = v_u + w * (v_c - v_u)        (all channels; v_c conditional, v_u with the null class)

The weight w may depend on the step (schedules of the public SVG code) or on t (guidance interval):

- "constant": w everywhere.
- "interval": w while t_lo <= t <= t_hi, plain conditional (w = 1) elsewhere. Guidance limited to an
  interval of t (Kynkaanniemi et al. 2024); note the public code's mode of this name means "every k-th
  step" instead, which we do not reproduce.
- "late": w only in the second half of the steps: on step i when (i + 1) / N > 0.5 (the public rule).
- "linear": a ramp w_i = 1 + (w - 1) * (i + 1) / N (the public rule).
- "cfg_zero_star": CFG-Zero* (Fan et al. 2025, arXiv 2503.18886): the first ``zero_init_steps`` steps
  return zero velocity ("zero-init": early on the learned flow is too inaccurate to follow), and then
  v = s* v_u + w (v_c - s* v_u) with the per-sample optimized scale s* = <v_c, v_u> / (||v_u||^2 + 1e-8),
  the projection of v_c on v_u that corrects the unconditional branch's magnitude. The public SVG code's
  "cfg_star" keeps zero-init but leaves s* out (plain CFG after it): ``optimized_scale=False`` gives that.
  Zero-init is meant for one-step samplers (Euler, Heun): a multistep sampler would keep the zeroed
  velocity in its history and extrapolate from it.

Where w = 1 the guided velocity is the conditional one, so the unconditional pass is skipped.
The two branches run as ONE forward on the concatenated batch; ``batched=False`` runs two passes (the
public code's way), kept for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from ..utils.checks import check_int, check_interval, check_number
from .solvers import VelocityFn


def check_guidance_scale(name: str, scale: float) -> float:
    """``scale`` when it is a usable guidance weight: finite and >= 0 (0: the unconditional model, 1: no guidance)."""
    return check_number(name, scale, at_least=0)


@dataclass
class GuidanceConfig:
    """Classifier-free guidance settings; ``scale`` 1.0 means no guidance (the conditional model alone)."""

    scale: float = 1.0
    mode: Literal["constant", "interval", "late", "linear", "cfg_zero_star"] = "constant"
    interval: tuple[float, float] = (0.0, 1.0)  # "interval": the t range where guidance is applied
    zero_init_steps: int = 1  # "cfg_zero_star": leading steps with zero velocity
    optimized_scale: bool = True  # "cfg_zero_star": apply s* (False = the public SVG code's variant)

    def __post_init__(self) -> None:
        check_guidance_scale("scale", self.scale)
        check_interval("interval", self.interval, at_least=0, at_most=1)
        check_int("zero_init_steps", self.zero_init_steps, at_least=0)

    def scale_at(self, step: int, num_steps: int, t: float) -> float:
        """The guidance weight w for the evaluation at time ``t`` during step ``step`` of ``num_steps``."""
        progress = (step + 1) / num_steps
        if self.mode == "interval":
            lo, hi = self.interval
            return self.scale if lo <= t <= hi else 1.0
        if self.mode == "late":
            return self.scale if progress > 0.5 else 1.0
        if self.mode == "linear":
            return 1.0 + (self.scale - 1.0) * progress
        return self.scale

    def zero_velocity(self, step: int) -> bool:
        """CFG-Zero*'s zero-init: this step's velocity is 0."""
        return self.mode == "cfg_zero_star" and step < self.zero_init_steps


def combine_guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, optimized_scale: bool) -> torch.Tensor:
    """v_u' + w (v_c - v_u'), where v_u' = s* v_u with the CFG-Zero* scale when ``optimized_scale``."""
    if optimized_scale:
        flat_c, flat_u = v_cond.flatten(1).float(), v_uncond.flatten(1).float()
        s_star = (flat_c * flat_u).sum(1) / (flat_u.square().sum(1) + 1e-8)
        v_uncond = v_uncond * s_star.view(-1, *([1] * (v_uncond.ndim - 1))).to(v_uncond.dtype)
    return v_uncond + scale * (v_cond - v_uncond)


def guided_velocity(model: nn.Module, labels: torch.Tensor, guidance: GuidanceConfig, num_steps: int,
                    null_class: int | None = None, batched: bool = True) -> VelocityFn:
    """The ``velocity_fn(x, t, step)`` of ``model(x, t, y)`` for ``labels`` [B] under ``guidance``.

    ``num_steps`` is the sampler's number of steps (step-based schedules need it); ``null_class`` defaults
    to ``model.null_class``. The returned velocity has x's dtype (a bf16 autocast model is cast back).
    """
    check_int("num_steps", num_steps, at_least=1)
    null_class = model.null_class if null_class is None else null_class
    null_labels = torch.full_like(labels, null_class)
    optimized = guidance.mode == "cfg_zero_star" and guidance.optimized_scale

    def velocity(x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        if guidance.zero_velocity(step):
            return torch.zeros_like(x)
        scale = guidance.scale_at(step, num_steps, float(t[0]))
        if scale == 1.0:  # v_u + 1 * (v_c - v_u) = v_c whatever v_u is
            return model(x, t, labels).to(x.dtype)
        if batched:
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null_labels]))
            v_cond, v_uncond = both.to(x.dtype).chunk(2)
        else:
            v_cond = model(x, t, labels).to(x.dtype)
            v_uncond = model(x, t, null_labels).to(x.dtype)
        return combine_guidance(v_cond, v_uncond, scale, optimized)

    return velocity
