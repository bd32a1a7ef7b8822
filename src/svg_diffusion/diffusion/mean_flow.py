"""MeanFlow: learn the average velocity over an interval of the flow, and generate in one step (or a few).

Convention: ours, as in :mod:`.flow`: t = 0 is noise, t = 1 is data, z_t = (1 - t) eps + t x, and the flow
dz/ds = v(z_s, s) runs forward in time from noise to data, v(z, t) = E[x - eps | z_t = z].

**The average velocity.** Follow the flow from z_t at time t to z_r at a later time r (the interval's other
end, nearer the data). The average velocity over the interval is

    u(z_t, t, r) = (z_r - z_t) / (r - t) = 1 / (r - t) * integral from t to r of v(z_s, s) ds,

with u(z, t, t) = v(z, t). A step with it is exact, z_r = z_t + (r - t) u(z_t, t, r), whatever its length:
one step from noise to data is z_1 = z_0 + u(z_0, 0, 1). The model is the DiT with ``interval_input``,
``model(z, t, y, r=r)`` (r = None means r = t: the ordinary velocity). The sampler that takes such steps is
:func:`.solvers.mean_flow_sample` (``mean_flow`` in the sampler registry); :func:`guided_average_velocity`
turns the model into what it integrates.

**The identity.** Multiply the definition by (r - t) and differentiate along the flow in t, r fixed:

    d/dt [(r - t) u] = d/dt integral from t to r of v ds   =>   -u + (r - t) du/dt = -v
                                                         =>   u = v + (r - t) du/dt,

where du/dt = (d_z u) v + d_t u is the derivative along the flow: the Jacobian-vector product of u(z, t, r)
with the tangent (v, 1, 0) on (z, t, r), computed in forward mode (:func:`total_derivative`) or by a central
difference along it (:func:`finite_difference_derivative`; ``MeanFlowConfig.derivative``). Training regresses
u_theta(z_t, t, r) on the stop-gradient target v + (r - t) du_theta/dt. Only the velocity is unknown, and
the target is linear in it, so the sample velocity x - eps (whose mean given z_t is v) gives the right
minimizer. At r = t the target is v and the loss is the flow-matching loss.

**The paper's convention** (Geng et al. 2025, arXiv 2505.13447) has time tau = 1 - t (tau = 0 data) and
writes u(z_tau, r', tau) with r' = 1 - r < tau. Its velocity eps - x is -v, its u is -u, tau - r' = r - t
and d/dtau = -d/dt, so its identity u = v - (tau - r') du/dtau and its step z_r' = z_tau - (tau - r') u are
ours term by term: in both, t names the end where z is and r the other end.

**Two forms** (``MeanFlowConfig.form``):

- ``"mean_flow"`` (MeanFlow): the JVP's tangent is the target velocity (x - eps, or a teacher's).
- ``"improved"`` (Improved MeanFlow, Geng et al., Dec 2025): the tangent is the model's own instantaneous
  velocity u_theta(z_t, t, t) (no gradient). The loss reads as a loss on the instantaneous velocity,
  ||V_theta - v||^2 with V_theta = u_theta - (r - t) sg(du_theta/dt), re-parameterized through u: its
  prediction depends on z_t alone, not on the noise and data that made it, so it is a plain regression.
  Its residual is the same expression as MeanFlow's; only the derivative's direction differs.

**Guidance folded into the target.** The target velocity is v_u + w (v_c - v_u) (CFG): v_c is x - eps or
a teacher's conditional velocity, v_u the unconditional velocity of the model itself at r = t (no
gradient) or of the teacher; the model then draws guided samples in one forward. w is fixed
(``guidance_scale``: MeanFlow) or drawn per sample and given to the model as an input (``guidance_range``
with ``DiTConfig.guidance_input``: Improved MeanFlow, w chosen at sampling). Rows whose label is dropped
train the unconditional model, with w = 1.

**Distillation** (MF-RAE, Hu et al. 2025): pass a trained flow-matching ``teacher``: its velocity replaces
x - eps, a lower-variance target than the sample velocity.

Forward-mode AD: the fused attention kernel has no forward derivative (torch 2.13's CPU flash kernel), so
the JVP runs with scaled-dot-product attention's math backend, softmax(q k^T / sqrt(d)) v written out in
PyTorch ops (:func:`total_derivative`).

Finite difference (MF-RAE's derivative): du/dt ~ (u(z + d v, t + d, r) - u(z - d v, t - d, r)) / 2d, the
tangent's direction forward in our t. MF-RAE's code, in the papers' convention, steps to z + d (eps - x) at
tau + d, our point behind; with its u and d/dtau both of the other sign, its quotient is our du/dt. Both
points are one forward without gradient (on the fast attention kernel), in fp32, of the rows with r != t
(docs/diffusion.md, "Finite difference").
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn as nn
from torch.autograd import forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import SVGError
from ..utils.checks import check_int, check_interval, check_number
from .flow import FlowMatchingConfig, interpolate, randn, sample_training_time, shift_time
from .guidance import check_guidance_scale, combine_guidance
from .solvers import AverageVelocityFn
from .transformer import DiTConfig


@dataclass
class MeanFlowConfig:
    """The MeanFlow objective's options; times and label drops are drawn by a :class:`.FlowMatchingConfig`.

    Defaults are the MeanFlow paper's best on ImageNet (25% of samples with r != t, adaptive weight with
    p = 1 and c = 1e-3); it drew both times logit-normal with mean -0.4 and std 1 on the noise level and
    no shift, i.e. ``FlowMatchingConfig(time_sampling="logit_normal", logit_normal_mean=-0.4, shift=1.0)``.
    """

    form: Literal["mean_flow", "improved"] = "mean_flow"
    interval_fraction: float = 0.25  # share of samples with r != t; the others train the plain velocity
    # Per-sample weight 1 / (e + c)^p (no gradient) on the mean squared error e: p = 0 is plain MSE, p = 1
    # makes every sample's loss ~ e / e, a robust loss. c is per element of the latent.
    adaptive_weight_power: float = 1.0
    adaptive_weight_eps: float = 1e-3
    guidance_scale: float = 1.0  # w folded into the target, fixed in training (1: no guidance)
    # Drawn w, uniform in [lo, hi], given to the model as an input (Improved MeanFlow); None: fixed w above.
    guidance_range: tuple[float, float] | None = None
    # How du/dt is taken: "jvp" exactly, by forward-mode AD (total_derivative); "finite_difference" by a central
    # difference with this step along the tangent: one fp32 forward without gradient of both points of the rows
    # with r != t (MF-RAE; finite_difference_derivative).
    derivative: Literal["jvp", "finite_difference"] = "jvp"
    finite_difference_step: float = 5e-3
    # Share of the r != t rows whose interval is one step of a few-step sampler instead of two drawn times:
    # an N-step grid (N from grid_steps) on the sampler's shift grid_shift (sampling.shift), one of its N steps
    # at random. Two independent times rarely span a long interval (P(r - t > 0.9) = 1% when uniform), yet
    # the one-step sampler asks only for (0, 1).
    grid_fraction: float = 0.0
    grid_steps: tuple[int, ...] = (1, 2, 4)
    grid_shift: float = 1.0
    # > 0: the grid rows regress on the teacher's own step over their interval, its guided flow followed from
    # z_t at t to r in this many Euler steps of the same shifted grid, instead of on the identity (needs a
    # teacher). The identity's target holds only as well as the model's own du/dt; this one is the one-step map.
    grid_teacher_steps: int = 0

    def __post_init__(self) -> None:
        check_number("interval_fraction", self.interval_fraction, at_least=0, at_most=1)
        check_number("grid_fraction", self.grid_fraction, at_least=0, at_most=1)
        check_number("grid_shift", self.grid_shift, above=0)
        if not self.grid_steps:
            raise ValueError("grid_steps must name at least one step count")
        for i, steps in enumerate(self.grid_steps):
            check_int(f"grid_steps[{i}]", steps, at_least=1)
        check_int("grid_teacher_steps", self.grid_teacher_steps, at_least=0)
        if self.grid_teacher_steps and not self.grid_fraction:
            raise ValueError("grid_teacher_steps sets the target of the grid rows: set grid_fraction > 0 too")
        check_number("adaptive_weight_power", self.adaptive_weight_power, at_least=0)
        check_number("adaptive_weight_eps", self.adaptive_weight_eps, above=0)
        check_number("finite_difference_step", self.finite_difference_step, above=0)
        check_guidance_scale("guidance_scale", self.guidance_scale)
        if self.guidance_range is not None:
            check_interval("guidance_range", self.guidance_range, at_least=0)
            if self.guidance_scale != 1.0:
                raise ValueError("guidance_scale (fixed w) and guidance_range (w as an input) exclude each other")


@dataclass
class MeanFlowInputs:
    """The randomness of one MeanFlow training batch."""

    noise: torch.Tensor  # [B, C, H, W]
    t: torch.Tensor  # [B] float32: where z is
    r: torch.Tensor  # [B] float32, r >= t: the interval's other end (r = t on the plain-velocity samples)
    drop: torch.Tensor  # [B] bool; True = use the null class
    guidance: torch.Tensor  # [B] float32: the guidance scale w of each sample (1 where the label is dropped)
    on_grid: torch.Tensor  # [B] bool: True where (t, r) is one step of a few-step sampler's grid

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every field, in the constructor's order: ``MeanFlowInputs(*inputs.tensors())`` is a copy."""
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self))

    def rows(self, start: int, stop: int) -> MeanFlowInputs:
        """Rows [start, stop): a rank's slice of inputs drawn for the global batch."""
        return MeanFlowInputs(*(tensor[start:stop] for tensor in self.tensors()))


def draw_mean_flow_inputs(shape: tuple[int, ...], flow: FlowMatchingConfig, config: MeanFlowConfig,
                          generator: torch.Generator | None,
                          device: torch.device | str | None = None) -> MeanFlowInputs:
    """Draw noise, (t, r), label drops and guidance scales for latents of ``shape``, in this fixed order.

    Both ends are drawn as :func:`.flow.sample_training_time` draws t (uniform or logit-normal, then the
    shift); the noisier one is t, the other r, and a coin keeps r != t on ``interval_fraction`` of the rows,
    as the MeanFlow paper does. Draw for the GLOBAL batch and take the rank's :meth:`~MeanFlowInputs.rows`.
    A ``shift: auto`` in ``flow`` must be resolved for the latent first (``FlowMatchingConfig.resolved``).
    """
    batch = shape[0]
    draw_device = generator.device if generator is not None else device
    noise = randn(tuple(shape), generator, device)
    first = sample_training_time(batch, flow, generator, device)
    second = sample_training_time(batch, flow, generator, device)
    t, r = torch.minimum(first, second), torch.maximum(first, second)
    interval = (torch.rand(batch, generator=generator, device=draw_device) < config.interval_fraction).to(device)
    drop = (torch.rand(batch, generator=generator, device=draw_device) < flow.class_dropout_prob).to(device)
    if config.guidance_range is None:
        guidance = torch.full((batch,), config.guidance_scale, device=device)
    else:
        lo, hi = config.guidance_range
        guidance = (lo + (hi - lo) * torch.rand(batch, generator=generator, device=draw_device)).to(device)
    on_grid = torch.zeros_like(interval)
    if config.grid_fraction > 0:  # drawn last, so that runs without it draw as before
        on_grid = (torch.rand(batch, generator=generator, device=draw_device) < config.grid_fraction).to(device)
        on_grid &= interval
        start, end = sampler_grid_intervals(batch, config.grid_steps, config.grid_shift, generator, draw_device)
        t, r = torch.where(on_grid, start.to(device), t), torch.where(on_grid, end.to(device), r)
    return MeanFlowInputs(noise, t, torch.where(interval, r, t), drop, torch.where(drop, 1.0, guidance), on_grid)


def sampler_grid_intervals(batch: int, grid_steps: tuple[int, ...], shift: float, generator: torch.Generator | None,
                           device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) [B] float32: for each row, one step of an N-step ``time_grid(N, shift)`` (N drawn from
    ``grid_steps``, the step drawn uniformly), the intervals the N-step mean_flow sampler steps over."""
    choice = torch.randint(len(grid_steps), (batch,), generator=generator, device=device)
    steps = torch.tensor(grid_steps, dtype=torch.float64, device=device)[choice]
    index = torch.floor(torch.rand(batch, generator=generator, device=device, dtype=torch.float64) * steps)
    return shift_time(index / steps, shift).float(), shift_time((index + 1) / steps, shift).float()


# average_velocity(z, t, rows): u at z, t [N] of the batch rows ``rows`` [N] (indices), whose r and conditions
# it holds.
RowsAverageVelocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] values shaped to broadcast over ``like`` [B, ...]."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def total_derivative(average_velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
                     t: torch.Tensor, tangent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u = average_velocity(z, t) and its derivative along the flow, du/dt = (d_z u) tangent + d_t u.

    One forward-mode pass (r is held fixed by the caller's closure: its tangent is 0). ``u`` keeps its graph
    to the parameters; the derivative is for a target and is detached by the caller. Dual tensors
    (``torch.autograd.forward_ad``) rather than ``torch.func.jvp``: both compute the same JVP, but
    DistributedDataParallel's forward cannot run on functorch's wrapped tensors. Attention runs on the math
    backend of ``scaled_dot_product_attention``: its fused CPU kernel has no forward-mode derivative (torch 2.13).
    """
    with sdpa_kernel(SDPBackend.MATH), forward_ad.dual_level():
        dual = average_velocity(forward_ad.make_dual(z, tangent), forward_ad.make_dual(t, torch.ones_like(t)))
        u, du_dt = forward_ad.unpack_dual(dual)
    return u, du_dt


def finite_difference_derivative(average_velocity: RowsAverageVelocity, z: torch.Tensor, t: torch.Tensor,
                                 tangent: torch.Tensor, step: float, rows: torch.Tensor) -> torch.Tensor:
    """du/dt of the batch's ``rows`` [N] (indices) along the tangent (tangent, 1, 0), by a central difference:

        du/dt ~ (u(z + step tangent, t + step) - u(z - step tangent, t - step)) / (2 step),

    error O(step^2). Both points are one forward of 2N rows, ``average_velocity(z, t, rows)`` evaluating rows
    ``rows`` of the batch (its r and conditions held fixed), without gradient: the derivative is for a target.

    Outside autocast, in the model's own precision: dividing by 2 step = 1e-2 magnifies the outputs' rounding
    100-fold, and bfloat16's (of outputs, and of inputs that differ by 0.5%) becomes an error of 29% to 310%
    of du/dt on small random DiTs, against 5e-5 to 3e-4 in fp32 (0.5% to 2% for the JVP under bf16 autocast).
    Near the ends of time the stencil steps out of [0, 1] (and below r - t = 0 where r - t < step): the DiT is
    smooth there (it embeds raw t, frequencies <= 1), and stepping through keeps the O(step^2) accuracy at
    t = 0 and 1 (float64: 1e-5 to 2.3e-5 relative, as inside), which a stencil shifted inside [0, 1] would
    lose (first order: 2e-3 to 1e-2).
    """
    stacked = torch.cat([rows, rows])  # [ahead; behind]
    steps = torch.full(rows.shape, step, dtype=t.dtype, device=t.device)
    offset = torch.cat([steps, -steps])  # the time step of each stacked row
    # Autocast off on z's device; meta tensors (FLOP counts) have none to turn off.
    autocast_off = (torch.autocast(z.device.type, enabled=False) if torch.amp.is_autocast_available(z.device.type)
                    else contextlib.nullcontext())
    with torch.no_grad(), autocast_off:
        u = average_velocity(z[stacked] + _per_sample(offset, z) * tangent[stacked], t[stacked] + offset, stacked)
    ahead, behind = u.chunk(2)
    return (ahead - behind) / (2 * step)


def _finite_difference_on_intervals(average_velocity: RowsAverageVelocity, z: torch.Tensor, t: torch.Tensor,
                                    r: torch.Tensor, tangent: torch.Tensor, step: float) -> torch.Tensor:
    """du/dt by :func:`finite_difference_derivative` on the rows with r != t, 0 on the others: the target
    weighs it by r - t, so the forward has 2 x ``interval_fraction`` of the batch's rows rather than 2 x all."""
    rows = (r != t).nonzero().flatten()
    derivative = finite_difference_derivative(average_velocity, z, t, tangent, step, rows)
    return torch.zeros(z.shape, dtype=derivative.dtype, device=z.device).index_copy(0, rows, derivative)


def teacher_average_velocity(teacher: nn.Module, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, y: torch.Tensor,
                             drop: torch.Tensor, guidance: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    """(z_r - z) / (r - t) [B, ...] float32: the average velocity of a flow-matching ``teacher(z, t, y, drop=)``
    over each row's interval (r > t), its guided flow v_u + w (v_c - v_u) (w = ``guidance`` [B]) followed from
    z at t to r in ``steps`` Euler steps, without gradient.

    The steps split [t, r] evenly before the ``shift`` (:func:`.flow.shift_time`, whose inverse is the shift
    by 1 / shift): when [t, r] is one step of an N-step ``time_grid(N, shift)`` they are that step of the
    (N x steps)-step grid, the sampler the teacher itself would run. Each step is one forward of the
    conditional and unconditional rows together; the state is carried in float32.
    """
    start, end = shift_time(t.double(), 1 / shift), shift_time(r.double(), 1 / shift)
    times = [shift_time(start + (end - start) * (i / steps), shift).float() for i in range(steps + 1)]
    times[0], times[-1] = t, r  # exact ends, whatever the float64 round trip does
    both_drops = torch.cat([drop, torch.ones_like(drop)])
    scale = _per_sample(guidance.float(), z)
    state = z.float()
    with torch.no_grad():
        for now, later in zip(times[:-1], times[1:]):
            both = teacher(torch.cat([state, state]).to(z.dtype), torch.cat([now, now]), torch.cat([y, y]),
                           drop=both_drops).float()
            conditional, unconditional = both.chunk(2)
            velocity = combine_guidance(conditional, unconditional, scale, optimized_scale=False)
            state = state + _per_sample(later - now, state) * velocity
    return (state - z.float()) / _per_sample(r - t, state)


def mean_flow_target(velocity: torch.Tensor, du_dt: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The MeanFlow identity's right-hand side v + (r - t) du/dt, without gradient, in float32 at least
    (bf16 model outputs are promoted; float64 stays)."""
    dtype = torch.promote_types(velocity.dtype, torch.float32)
    interval = _per_sample(r - t, velocity).to(dtype)
    return (velocity.to(dtype) + interval * du_dt.to(dtype)).detach()


@dataclass
class MeanFlowLoss:
    """The objective to minimize and, for logging, the unweighted mean squared error."""

    loss: torch.Tensor  # scalar: mean over samples of the adaptively weighted per-sample error
    mse: torch.Tensor  # scalar, detached: the mean squared error over every element (the flow-matching loss at r = t)


def _target_velocity(model: nn.Module, teacher: nn.Module | None, x: torch.Tensor, inputs: MeanFlowInputs,
                     config: MeanFlowConfig, z: torch.Tensor, y: torch.Tensor,
                     model_guidance: torch.Tensor | None) -> torch.Tensor:
    """The (guided) velocity the identity is built on: v_u + w (v_c - v_u), or v_c without guidance."""
    all_dropped = torch.ones_like(inputs.drop)
    with torch.no_grad():
        if teacher is None:
            conditional = x - inputs.noise
        else:
            conditional = teacher(z, inputs.t, y, drop=inputs.drop)
        # Decided by the config, not by the drawn scales: every rank then runs the same forwards.
        if config.guidance_scale == 1.0 and config.guidance_range is None:
            return conditional
        if teacher is None:  # the model's own unconditional velocity: r = t, unguided
            unguided = None if model_guidance is None else torch.ones_like(model_guidance)
            unconditional = model(z, inputs.t, y, drop=all_dropped, r=inputs.t, guidance=unguided)
        else:
            unconditional = teacher(z, inputs.t, y, drop=all_dropped)
    scale = _per_sample(inputs.guidance, conditional).to(conditional.dtype)
    return combine_guidance(conditional, unconditional.to(conditional.dtype), scale, optimized_scale=False)


def mean_flow_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, inputs: MeanFlowInputs,
                   config: MeanFlowConfig, teacher: nn.Module | None = None) -> MeanFlowLoss:
    """The MeanFlow loss of ``model(z, t, y, drop=, r=, guidance=)`` (the average velocity) on latents x.

    ``inputs`` come from :func:`draw_mean_flow_inputs`, so the caller controls all randomness. ``teacher``
    (a flow-matching ``teacher(z, t, y, drop=)``, frozen) distils its velocity instead of x - eps. The
    model gets the drawn guidance scales as an input only with ``config.guidance_range``.
    """
    z = interpolate(x, inputs.noise, inputs.t)
    model_guidance = inputs.guidance if config.guidance_range is not None else None
    velocity = _target_velocity(model, teacher, x, inputs, config, z, y, model_guidance)
    if config.form == "improved":
        with torch.no_grad():
            tangent = model(z, inputs.t, y, drop=inputs.drop, r=inputs.t, guidance=model_guidance)
    else:
        tangent = velocity

    def average_velocity(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """u_theta at z, t of the batch's ``rows``: their labels, drops, r and guidance scales."""
        guidance = None if model_guidance is None else model_guidance[rows]
        return model(z, t, y[rows], drop=inputs.drop[rows], r=inputs.r[rows], guidance=guidance)

    tangent = tangent.to(z.dtype)
    if config.derivative == "jvp":
        u, du_dt = total_derivative(average_velocity, z, inputs.t, tangent)
    else:
        u = average_velocity(z, inputs.t)
        du_dt = _finite_difference_on_intervals(average_velocity, z, inputs.t, inputs.r, tangent,
                                                config.finite_difference_step)
    target = mean_flow_target(velocity, du_dt, inputs.t, inputs.r)
    if config.grid_teacher_steps:
        target = _teacher_steps_on_grid(target, teacher, z, y, inputs, config)
    error = (u.to(target.dtype) - target).square().flatten(1).mean(1)  # [B]
    weight = (error.detach() + config.adaptive_weight_eps).pow(-config.adaptive_weight_power)
    return MeanFlowLoss(loss=(weight * error).mean(), mse=error.mean().detach())


def _teacher_steps_on_grid(target: torch.Tensor, teacher: nn.Module | None, z: torch.Tensor, y: torch.Tensor,
                           inputs: MeanFlowInputs, config: MeanFlowConfig) -> torch.Tensor:
    """``target`` with its grid rows replaced by the teacher's average velocity over their intervals."""
    if teacher is None:
        raise ValueError("mean_flow.grid_teacher_steps follows a teacher's flow: pass a teacher (distill)")
    rows = inputs.on_grid.nonzero().flatten()
    if not len(rows):  # a frozen teacher without gradients: a rank may skip its forwards alone
        return target
    stepped = teacher_average_velocity(teacher, z[rows], inputs.t[rows], inputs.r[rows], y[rows], inputs.drop[rows],
                                       inputs.guidance[rows], config.grid_teacher_steps, config.grid_shift)
    return target.index_copy(0, rows, stepped.to(target.dtype))


def check_sampling_guidance(config: DiTConfig, guidance_scale: float) -> None:
    """A clear error when a MeanFlow DiT of ``config`` cannot sample at ``guidance_scale``: a model without
    ``guidance_input`` samples with the guidance it was trained with (folded into its target, or none)."""
    if guidance_scale != 1.0 and not config.guidance_input:
        raise SVGError(f"guidance scale {guidance_scale:g}: this MeanFlow model has no guidance input "
                       "(DiTConfig.guidance_input); its guidance was fixed in training, sample it with scale 1")


def guided_average_velocity(model: nn.Module, labels: torch.Tensor, guidance_scale: float = 1.0) -> AverageVelocityFn:
    """The ``average_velocity(x, t, r)`` of a MeanFlow DiT for ``labels`` [B]: one forward per step.

    A model with ``guidance_input`` applies ``guidance_scale`` itself; any other one needs scale 1
    (:func:`check_sampling_guidance`). The result has x's dtype.
    """
    check_sampling_guidance(model.config, guidance_scale)
    takes_guidance = model.config.guidance_input

    def average_velocity(x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        guidance = torch.full_like(t, guidance_scale) if takes_guidance else None
        return model(x, t, labels, r=r, guidance=guidance).to(x.dtype)

    return average_velocity
