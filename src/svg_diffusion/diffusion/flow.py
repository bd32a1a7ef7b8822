"""Flow matching (rectified flow): the path, the time shift, training-time sampling and the loss.

Convention (the public SVG/SiT code's): t = 0 is pure noise, t = 1 is data,

    z_t = (1 - t) * eps + t * x,        target velocity v = dz_t/dt = x - eps,

and the model is trained with plain MSE on v.

Time shift. We express it in the SD3/diffusers convention, on the noise level sigma = 1 - t:

    sigma' = k * sigma / (1 + (k - 1) * sigma),      k > 1 spends more of the steps/samples near noise.

The public SVG code writes the same map on t as t' = s * t / (1 + (s - 1) * t); the two agree exactly when
k = 1 / s. So the paper's training shift s = 0.4 is k = 2.5 here, and its sampling shift s = 0.15 is
k = 1 / 0.15 ~ 6.67. :func:`shift_from_public` / :func:`shift_to_public` convert.

A shift that follows the latent's size (``shift: auto``): the more numbers a sample has, the more of its
structure survives a given noise level, so training must spend more time at high noise. RAE (Zheng et al.
2025) scales the shift with the square root of the dimension, k = sqrt(positions × channels / base), base 4096
(:func:`dimension_shift`; on our demo latents docs/results.md measures it against fixed shifts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn as nn

from ..utils.checks import check_number


def shift_from_public(s: float) -> float:
    """The public code's shift ``s`` (applied to t, s < 1 favours noise) as our SD3-style ``k`` = 1 / s."""
    return 1.0 / check_number("public shift", s, above=0)


def shift_to_public(k: float) -> float:
    """Our SD3-style shift ``k`` as the public code's ``s`` = 1 / k."""
    return 1.0 / check_number("shift", k, above=0)


def shift_time(t: torch.Tensor, k: float) -> torch.Tensor:
    """Apply the SD3 shift sigma' = k*sigma / (1 + (k-1)*sigma) with sigma = 1 - t, and return t' = 1 - sigma'.

    Written directly on t as t' = t / (k - (k - 1) * t), which keeps t = 0 and t = 1 exact. k = 1 is the
    identity; k = 2.5 is the paper's training shift, k = 1/0.15 its sampling shift.
    """
    check_number("shift", k, above=0)
    return t / (k - (k - 1) * t)


def dimension_shift(positions: int, channels: int, base: float = 4096.0) -> float:
    """RAE's dimension-dependent shift k = sqrt(positions * channels / base) (SD3 convention)."""
    if positions < 1 or channels < 1 or base <= 0:
        raise ValueError(f"dimension_shift needs positive sizes, got {positions} positions, {channels} channels, base {base}")
    return math.sqrt(positions * channels / base)


@dataclass
class FlowMatchingConfig:
    """How training draws times and labels. Defaults follow the paper (uniform t, shift k = 2.5, 10% drop).

    ``shift``: the SD3-style k, or ``"auto"``: :func:`dimension_shift` of the modelled latent (positions ×
    channels the transformer sees, after the latent transform) with ``shift_base``; :meth:`resolved` fixes it.
    """

    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    # Logit-normal is over the noise level sigma = 1 - t as in SD3: sigma = sigmoid(mean + std * n).
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    shift: float | Literal["auto"] = 2.5  # SD3-style k; the public code's s = 0.4
    shift_base: float = 4096.0  # with shift "auto"
    class_dropout_prob: float = 0.1  # labels replaced by the null class for classifier-free guidance

    def resolved(self, positions: int, channels: int) -> FlowMatchingConfig:
        """This config with ``shift: auto`` replaced by the number it means for a latent of that size."""
        if self.shift != "auto":
            return self
        return replace(self, shift=dimension_shift(positions, channels, self.shift_base))

    def __post_init__(self) -> None:
        if self.shift != "auto":  # "auto" becomes a number in resolved()
            check_number("shift", self.shift, above=0)
        check_number("shift_base", self.shift_base, above=0)
        check_number("logit_normal_mean", self.logit_normal_mean)
        check_number("logit_normal_std", self.logit_normal_std, above=0)
        check_number("class_dropout_prob", self.class_dropout_prob, at_least=0, at_most=1)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (so a seed means the same numbers), then moved."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def sample_training_time(batch_size: int, config: FlowMatchingConfig, generator: torch.Generator | None,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Training times t [B] in [0, 1] (float32): uniform or logit-normal in sigma, then shifted."""
    if config.shift == "auto":
        raise ValueError("flow.shift is 'auto': resolve it for the latent first (FlowMatchingConfig.resolved)")
    draw_device = generator.device if generator is not None else device
    if config.time_sampling == "uniform":
        t = torch.rand(batch_size, generator=generator, device=draw_device, dtype=torch.float64)
    else:
        n = torch.randn(batch_size, generator=generator, device=draw_device, dtype=torch.float64)
        t = 1 - torch.sigmoid(config.logit_normal_mean + config.logit_normal_std * n)
    return shift_time(t, config.shift).float().to(device)


@dataclass
class FlowInputs:
    """The randomness of one training batch: noise, times and which labels are dropped."""

    noise: torch.Tensor  # [B, C, H, W]
    t: torch.Tensor  # [B] float32 in [0, 1]
    drop: torch.Tensor  # [B] bool; True = use the null class

    def rows(self, start: int, stop: int) -> FlowInputs:
        """Rows [start, stop): a rank's slice of inputs drawn for the global batch."""
        return FlowInputs(self.noise[start:stop], self.t[start:stop], self.drop[start:stop])


def draw_flow_inputs(shape: tuple[int, ...], config: FlowMatchingConfig, generator: torch.Generator | None,
                     device: torch.device | str | None = None) -> FlowInputs:
    """Draw noise, times and label drops for a batch of latents of ``shape``, in this fixed order.

    Trainers draw them for the GLOBAL batch from the step's generator and take their rank's :meth:`rows`,
    so one process and N processes compute the same step.
    """
    noise = randn(tuple(shape), generator, device)
    t = sample_training_time(shape[0], config, generator, device)
    draw_device = generator.device if generator is not None else device
    drop = torch.rand(shape[0], generator=generator, device=draw_device) < config.class_dropout_prob
    return FlowInputs(noise, t, drop.to(device))


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The linear path z_t = (1 - t) * noise + t * x, with t [B] broadcast over the other dimensions."""
    t = t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (1 - t) * noise + t * x


def flow_matching_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                       drop: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between model(z_t, t, y) and the target velocity x - noise (a scalar, float32).

    ``noise`` and ``t`` are given (see :func:`draw_flow_inputs`), so the caller controls all randomness;
    ``drop`` marks labels to replace by the null class. The mean is over every element, which equals the
    public code's mean over samples of per-sample means.
    """
    z_t = interpolate(x, noise, t)
    velocity = model(z_t, t, y, drop=drop)
    return (velocity.float() - (x - noise).float()).square().mean()
