"""Samplers: plain functions that carry noise (t = 0) to data (t = 1) on a time grid, and their registry.

Every sampler has the form ``sampler(model_fn, noise, times, ...) -> sample`` (k-diffusion style):

- ``model_fn``: for the ODE/SDE samplers a ``velocity_fn(x, t, step) -> v``: x [B, ...], t [B] float32
  (every entry the same time), ``step`` the index of the grid interval being integrated (guidance schedules
  such as "late" depend on it); build one from a model with :func:`.guidance.guided_velocity`. For the
  samplers in :data:`AVERAGE_VELOCITY_SAMPLERS` (``mean_flow``) an ``average_velocity(x, t, r) -> u``, the
  output of a MeanFlow model (:mod:`.mean_flow`), built with :func:`.mean_flow.guided_average_velocity`.
- ``noise``: the starting point x_0 ~ N(0, I); the sample keeps its dtype and device.
- ``times``: the grid t_0 = 0 < t_1 < ... < t_N = 1 of :func:`time_grid` (N steps).

Samplers never draw noise from global state: the SDE sampler takes an explicit generator. After every step
they check that the latent is still finite and otherwise stop with an SVGError naming the step, so a
diverged run (e.g. a far too strong guidance, or a model with NaN weights) is never decoded into pictures.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from numpy.polynomial import Polynomial
from tqdm.auto import tqdm

from ..errors import SVGError
from ..utils.checks import check_int, check_number
from .flow import randn, shift_time

VelocityFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# u(x, t, r): the average velocity from time t (where x is) to time r, both [B] float32.
AverageVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(num_steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """N + 1 times from 0 to 1: linspace in float64, SD3-style shift ``k`` (see :mod:`.flow`), then float32.

    The paper samples with 25 steps and the public shift s = 0.15, i.e. ``time_grid(25, shift=1/0.15)``.
    The endpoints are exactly 0 and 1.
    """
    check_int("num_steps", num_steps, at_least=1)
    check_number("shift", shift, above=0)
    grid = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    return shift_time(grid, shift).float().to(device)


def _check_grid(times: torch.Tensor) -> list[float]:
    """The grid as Python floats (exact copies of the float32 values), after checking it."""
    values = times.tolist()
    if times.ndim != 1 or len(values) < 2 or values[0] != 0.0 or values[-1] != 1.0:
        raise SVGError(f"time grid must be 1-D, start at 0 and end at 1 (got {len(values)} points)")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise SVGError("time grid must be strictly increasing")
    return values


def _time_batch(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)


def _steps(num_steps: int, progress: bool, name: str):
    return tqdm(range(num_steps), desc=name, disable=not progress, leave=False)


def _check_finite(x: torch.Tensor, step: int, grid: list[float]) -> None:
    """Stop when step ``step`` (counted from 0) left a NaN or infinite value in the latent ``x``.

    One reduction and one host sync per step: negligible next to a transformer forward.
    """
    if not bool(torch.isfinite(x).all()):
        raise SVGError(f"sampling diverged: the latent is NaN or infinite after step {step + 1} of {len(grid) - 1} "
                       f"(t = {grid[step]:.4g} -> {grid[step + 1]:.4g}); nothing was decoded "
                       "(check the guidance scale, the noise given and the model's weights)")


@torch.no_grad()
def sample_euler(velocity_fn: VelocityFn, noise: torch.Tensor, times: torch.Tensor,
                 progress: bool = False) -> torch.Tensor:
    """Euler ODE: x <- x + (t_{i+1} - t_i) * v(x, t_i). First order; the paper's sampler (25 steps).

    For this linear path an Euler step is exactly a DDIM step.
    """
    grid = _check_grid(times)
    steps = (times[1:] - times[:-1]).tolist()  # float32 differences, as in the public code
    x = noise
    for i in _steps(len(steps), progress, "euler"):
        x = x + steps[i] * velocity_fn(x, _time_batch(x, grid[i]), i)
        _check_finite(x, i, grid)
    return x


@torch.no_grad()
def sample_heun(velocity_fn: VelocityFn, noise: torch.Tensor, times: torch.Tensor,
                progress: bool = False) -> torch.Tensor:
    """Heun ODE (explicit trapezoid): Euler predictor, then the average of both slopes. Second order.

    Two velocity evaluations per step, the last one at t = 1, like the public code; both use the step's index.
    """
    grid = _check_grid(times)
    steps = (times[1:] - times[:-1]).tolist()
    x = noise
    for i in _steps(len(steps), progress, "heun"):
        x = _heun_step(velocity_fn, x, velocity_fn(x, _time_batch(x, grid[i]), i), steps[i], grid[i + 1], i)
        _check_finite(x, i, grid)
    return x


def _heun_step(velocity_fn: VelocityFn, x: torch.Tensor, v: torch.Tensor, dt: float, t_next: float,
               step: int) -> torch.Tensor:
    """One Heun step of length dt from x, whose velocity v is already known."""
    v_next = velocity_fn(x + dt * v, _time_batch(x, t_next), step)
    return x + 0.5 * dt * (v + v_next)


def adams_bashforth_weights(history: list[float], t: float, s: float) -> list[float]:
    """Weights w_j with x_s = x_t + sum_j w_j v(t_j): the exact integral over [t, s] of the polynomial that
    interpolates the velocities at the times ``history`` (the newest last, equal to t)."""
    weights = []
    for j, t_j in enumerate(history):
        basis = Polynomial([1.0])  # the Lagrange polynomial L_j: 1 at t_j, 0 at the other history times
        for m, t_m in enumerate(history):
            if m != j:
                basis = basis * Polynomial([-t_m, 1.0]) / (t_j - t_m)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(s) - antiderivative(t)))
    return weights


@torch.no_grad()
def sample_adams_bashforth(velocity_fn: VelocityFn, noise: torch.Tensor, times: torch.Tensor, order: int = 2,
                           progress: bool = False) -> torch.Tensor:
    """Adams-Bashforth multistep on the velocity (variable steps) of order 2 or 3, one evaluation per step.

    Each step integrates the polynomial through the last ``order`` velocities. A multistep method is only
    as accurate as its start: order 2 starts with an Euler step, order 3 with one Heun step (the only
    step with two evaluations), then uses the history it has. The velocity of the linear path is smooth in
    t, so the order holds on shifted grids; this suits few-step sampling where Heun's second evaluation
    on every step is too expensive.
    """
    if order not in (2, 3):
        raise SVGError(f"Adams-Bashforth order must be 2 or 3, got {order}")
    grid = _check_grid(times)
    x = noise
    history: list[tuple[float, torch.Tensor]] = []  # (t_j, v_j) of the last steps, newest last
    for i in _steps(len(grid) - 1, progress, f"adams-bashforth-{order}"):
        t, s = grid[i], grid[i + 1]
        history = history[-(order - 1):] + [(t, velocity_fn(x, _time_batch(x, t), i))]
        if i == 0 and order == 3:
            x = _heun_step(velocity_fn, x, history[0][1], s - t, s, i)
        else:
            weights = adams_bashforth_weights([t_j for t_j, _ in history], t, s)
            x = x + sum(w * v for w, (_, v) in zip(weights, history))
        _check_finite(x, i, grid)
    return x


def _log_snr(t: float) -> float:
    """lambda = log(alpha / sigma) = log(t / (1 - t)) for the linear path (infinite at the endpoints)."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


@torch.no_grad()
def sample_dpm_solver_2m(velocity_fn: VelocityFn, noise: torch.Tensor, times: torch.Tensor,
                         progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in data prediction, one velocity evaluation per step.

    For the linear path (alpha = t, sigma = 1 - t) the data prediction is x_hat = x + (1 - t) * v and the
    exact-integrator step from t to s with a constant data prediction D is

        x_s = ((1 - s) * x_t + (s - t) * D) / (1 - t).

    With D = x_hat this is the Euler/DDIM step. 2M extrapolates D linearly in lambda = log(t / (1 - t)) from
    the previous step's prediction: D = x_hat + (x_hat - x_hat_prev) / (2 r), r = h_prev / h. Steps whose
    lambda interval is infinite (from t = 0 or to t = 1) fall back to first order, as DPM-Solver++ does
    for its final step. On t-uniform (shifted) grids the lambda steps next to the endpoints do not shrink
    as N grows, so the second order only shows asymptotically (about 1.7 at 32-128 steps on a Gaussian);
    data prediction is the form known to stay stable under strong guidance.
    """
    grid = _check_grid(times)
    x = noise
    previous: tuple[torch.Tensor, float] | None = None  # (x_hat, t) of the last step
    for i in _steps(len(grid) - 1, progress, "dpm-solver++(2m)"):
        t, s = grid[i], grid[i + 1]
        v = velocity_fn(x, _time_batch(x, t), i)
        x_hat = x + (1 - t) * v
        data = x_hat
        if previous is not None and previous[1] > 0.0 and s < 1.0:
            h = _log_snr(s) - _log_snr(t)
            h_prev = _log_snr(t) - _log_snr(previous[1])
            data = x_hat + (x_hat - previous[0]) * (h / (2 * h_prev))
        x = ((1 - s) * x + (s - t) * data) / (1 - t)
        _check_finite(x, i, grid)
        previous = (x_hat, t)
    return x


def sde_diffusion(t: float, form: Literal["sigma", "constant", "sbdm"], norm: float) -> float:
    """The SDE's diffusion weight w(t) (the noise added is sqrt(2 w dt)), in the SiT forms.

    "sigma": w = norm * (1 - t) (SiT's default); "constant": w = norm; "sbdm": w = norm * (1 - t) / t, the
    score-based-diffusion choice, which is infinite at t = 0 (use a grid that starts after 0).
    """
    if form == "sigma":
        return norm * (1 - t)
    if form == "constant":
        return norm
    if form == "sbdm":
        if t <= 0:
            raise SVGError("the 'sbdm' diffusion is infinite at t = 0: use 'sigma' or 'constant'")
        return norm * (1 - t) / t
    raise SVGError(f"unknown SDE diffusion form {form!r} (known: sigma, constant, sbdm)")


def score_from_velocity(x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """grad log p_t(x) for the linear path: eps_hat = x - t * v, score = -eps_hat / (1 - t) (t < 1)."""
    return (t * v - x) / (1 - t)


@torch.no_grad()
def sample_euler_maruyama(velocity_fn: VelocityFn, noise: torch.Tensor, times: torch.Tensor,
                          generator: torch.Generator | None = None,
                          diffusion: Literal["sigma", "constant", "sbdm"] = "sigma", diffusion_norm: float = 1.0,
                          last_step: Literal["mean", "euler"] = "mean", progress: bool = False) -> torch.Tensor:
    """Euler-Maruyama on the SDE with the same marginals as the flow (the SiT SDE sampler).

        dx = [v + w(t) * score] dt + sqrt(2 w(t)) dW,     score = (t * v - x) / (1 - t),

    where the score comes from the velocity (linear path). The added drift w * score and the noise cancel
    in the Fokker-Planck equation, so every w gives the same marginals as the ODE, but the noise corrects
    earlier errors. The score is singular at t = 1, so the last interval [t_{N-1}, 1] is a deterministic
    step: "mean" takes the SDE drift without noise (SiT's "Mean"), "euler" the plain velocity, which here
    equals the denoised estimate x + (1 - t) * v ("Tweedie"). The Brownian increments come from
    ``generator`` in step order.
    """
    grid = _check_grid(times)
    steps = (times[1:] - times[:-1]).tolist()
    if last_step not in ("mean", "euler"):
        raise SVGError(f"unknown SDE last step {last_step!r} (known: mean, euler)")
    check_number("diffusion_norm", diffusion_norm, at_least=0)
    x = noise
    last = len(steps) - 1
    for i in _steps(len(steps), progress, "euler-maruyama"):
        t = grid[i]
        v = velocity_fn(x, _time_batch(x, t), i)
        if i == last and last_step == "euler":
            x = x + steps[i] * v
        else:
            w = sde_diffusion(t, diffusion, diffusion_norm)
            x = x + steps[i] * (v + w * score_from_velocity(x, v, t))
            if i < last:
                x = x + math.sqrt(2 * w * steps[i]) * randn(tuple(x.shape), generator, x.device, x.dtype)
        _check_finite(x, i, grid)
    return x


@torch.no_grad()
def mean_flow_sample(average_velocity: AverageVelocityFn, noise: torch.Tensor, times: torch.Tensor,
                     progress: bool = False) -> torch.Tensor:
    """N steps of the average velocity on a grid t_0 = 0 < ... < t_N = 1 (any N >= 1, e.g. ``time_grid(1)``):

        x <- x + (t_{i+1} - t_i) * u(x, t_i, t_{i+1}).

    Each step is exact for the true average velocity, so unlike an ODE solver the grid changes only which
    of the model's intervals are used, not a discretization error. Build ``average_velocity`` from a model
    with :func:`.mean_flow.guided_average_velocity`.
    """
    grid = _check_grid(times)
    steps = (times[1:] - times[:-1]).tolist()  # float32 differences, as the ODE samplers take them
    x = noise
    for i in _steps(len(steps), progress, "mean flow"):
        x = x + steps[i] * average_velocity(x, _time_batch(x, grid[i]), _time_batch(x, grid[i + 1]))
        _check_finite(x, i, grid)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "adams_bashforth": sample_adams_bashforth,
    "dpm_solver_2m": sample_dpm_solver_2m,
    "euler_maruyama": sample_euler_maruyama,
    "mean_flow": mean_flow_sample,
}
# The samplers that take a MeanFlow model's average velocity u(x, t, r); the others take a velocity v(x, t, step).
AVERAGE_VELOCITY_SAMPLERS = frozenset({"mean_flow"})


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function called ``name`` (see :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise SVGError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
    return SAMPLERS[name]
