"""Samplers on an analytic flow, the time grid, and classifier-free guidance."""

import math
from functools import partial

import pytest
import torch

from svg_diffusion.diffusion import (
    AVERAGE_VELOCITY_SAMPLERS,
    SAMPLERS,
    DiT,
    DiTConfig,
    GuidanceConfig,
    combine_guidance,
    get_sampler,
    guided_velocity,
    sample_adams_bashforth,
    sample_dpm_solver_2m,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
    shift_from_public,
    time_grid,
)
from svg_diffusion.errors import SVGError

# Data x ~ N(MU, S^2) per dimension. Along z_t = (1 - t) eps + t x the marginal is N(t MU, var_t) with
# var_t = t^2 S^2 + (1 - t)^2, the velocity E[x - eps | z_t] is affine in z_t, and the ODE maps the noise
# x_0 to exactly MU + S * x_0.
MU, S = 1.0, 2.0


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor, step: int, mu: float = MU, s: float = S) -> torch.Tensor:
    t = t.double().view(-1, *([1] * (x.ndim - 1)))
    var = t * t * s * s + (1 - t) ** 2
    return mu + (t * s * s - (1 - t)) / var * (x - t * mu)


def final_error(sampler, num_steps: int, shift: float) -> float:
    noise = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]
    sample = sampler(gaussian_velocity, noise, time_grid(num_steps, shift))
    return (sample - (MU + S * noise)).abs().max().item()


def test_time_grid_endpoints_and_public_shift():
    grid = time_grid(25, shift_from_public(0.15))
    assert grid.dtype == torch.float32 and grid.shape == (26,)
    assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
    assert (grid[1:] > grid[:-1]).all()
    # Linspace in float64, the public map t' = s t / (1 + (s - 1) t), then float32: identical bits.
    t = torch.linspace(0, 1, 26, dtype=torch.float64)
    assert torch.equal(grid, (0.15 * t / (1 + (0.15 - 1) * t)).float())
    assert torch.equal(time_grid(10), torch.linspace(0, 1, 11, dtype=torch.float64).float())
    # The shift spends steps near noise: with k ~ 6.67 half of the steps lie below t = 0.15.
    assert (grid < 0.15).sum().item() >= 13


@pytest.mark.parametrize("sampler, order, shift", [
    (sample_euler, 1, 3.0),
    (sample_heun, 2, 3.0),
    (partial(sample_adams_bashforth, order=2), 2, 3.0),
    (partial(sample_adams_bashforth, order=3), 3, 3.0),
    (sample_dpm_solver_2m, 2, 1.0),
])
def test_order_of_accuracy_on_gaussian_flow(sampler, order, shift):
    errors = [final_error(sampler, n, shift) for n in (32, 64, 128)]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    # DPM-Solver++(2M) is second order only asymptotically on t-uniform grids (its lambda steps near the
    # endpoints do not shrink with N): about 1.7 here.
    low = order - (0.4 if sampler is sample_dpm_solver_2m else 0.15)
    assert all(low < r < order + 0.3 for r in rates), (errors, rates)


def test_sde_sampler_reaches_the_data_distribution():
    noise = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu, s = 0.7, 0.5
    velocity = partial(gaussian_velocity, mu=mu, s=s)
    sample = sample_euler_maruyama(velocity, noise, time_grid(100), generator=torch.Generator().manual_seed(1))
    assert sample.mean().item() == pytest.approx(mu, abs=0.01)
    assert sample.std().item() == pytest.approx(s, rel=0.02)
    # The noise matters: the SDE does not follow the ODE's deterministic map.
    assert (sample - (mu + s * noise)).abs().mean().item() > 0.05


def test_sde_sampler_is_reproducible_from_its_generator():
    noise = torch.randn(16, 3, dtype=torch.float64)
    run = lambda seed, **kw: sample_euler_maruyama(  # noqa: E731
        gaussian_velocity, noise, time_grid(20), generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    for kwargs in ({"diffusion": "constant"}, {"last_step": "euler"}, {"diffusion_norm": 0.5}):
        assert torch.isfinite(run(5, **kwargs)).all()
    with pytest.raises(SVGError, match="infinite at t = 0"):
        run(5, diffusion="sbdm")


# (mean_flow, which takes an average velocity, has this test in tests/test_mean_flow.py)
@pytest.mark.parametrize("name", [name for name in SAMPLERS if name not in AVERAGE_VELOCITY_SAMPLERS])
def test_a_latent_that_turns_nan_stops_sampling_at_its_step(name):
    def velocity(x, t, step):  # the analytic flow until the third step, whose velocity has a NaN
        v = gaussian_velocity(x, t, step)
        if step == 2:
            v[1, 0] = float("nan")
        return v

    times = time_grid(5, shift=2.0)
    extra = {"generator": torch.Generator().manual_seed(0)} if name == "euler_maruyama" else {}
    with pytest.raises(SVGError) as error:
        get_sampler(name)(velocity, torch.zeros(2, 1, dtype=torch.float64), times, **extra)
    assert f"NaN or infinite after step 3 of 5 (t = {times[2]:.4g} -> {times[3]:.4g})" in str(error.value)


def test_sampler_arguments_are_checked():
    assert get_sampler("heun") is sample_heun
    with pytest.raises(SVGError, match="unknown sampler 'ddpm'"):
        get_sampler("ddpm")
    with pytest.raises(SVGError, match="start at 0 and end at 1"):
        sample_euler(gaussian_velocity, torch.zeros(2, 1), torch.linspace(0, 0.5, 5))
    with pytest.raises(SVGError, match="num_steps must be an integer >= 1, got 0"):
        time_grid(0)


# --- classifier-free guidance ---------------------------------------------------------------------------

GUIDANCE_MODES = [
    GuidanceConfig(scale=3.0),
    GuidanceConfig(scale=3.0, mode="interval", interval=(0.2, 0.8)),
    GuidanceConfig(scale=3.0, mode="late"),
    GuidanceConfig(scale=3.0, mode="linear"),
    GuidanceConfig(scale=3.0, mode="cfg_zero_star"),
    GuidanceConfig(scale=3.0, mode="cfg_zero_star", optimized_scale=False, zero_init_steps=2),
]


class CountingModel(torch.nn.Module):
    """A real tiny DiT (all weights random) that counts the samples it is run on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dit = DiT(DiTConfig(in_channels=4, input_size=4, hidden_size=32, depth=2, num_heads=4, num_classes=3))
        with torch.no_grad():
            for p in self.dit.parameters():
                p.normal_(0, 0.2)
        self.null_class = self.dit.null_class
        self.samples_seen = 0

    def forward(self, x, t, y):
        self.samples_seen += x.shape[0]
        return self.dit(x, t, y)


@pytest.mark.parametrize("guidance", GUIDANCE_MODES, ids=lambda g: f"{g.mode}-{g.optimized_scale}")
def test_batched_cfg_equals_two_passes(guidance):
    model = CountingModel()
    labels = torch.tensor([0, 2, 1])
    noise = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    times = time_grid(6, shift=2.0)
    with torch.no_grad():
        batched = sample_heun(guided_velocity(model, labels, guidance, 6, batched=True), noise, times)
        two_pass = sample_heun(guided_velocity(model, labels, guidance, 6, batched=False), noise, times)
        unguided = sample_heun(guided_velocity(model, labels, GuidanceConfig(), 6), noise, times)
    assert torch.allclose(batched, two_pass, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched, unguided, atol=1e-3)


def test_guided_velocity_formula():
    model = CountingModel()
    x, t = torch.randn(2, 4, 4, 4), torch.full((2,), 0.4)
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        v_c = model(x, t, labels)
        v_u = model(x, t, torch.full_like(labels, 3))
        plain = guided_velocity(model, labels, GuidanceConfig(scale=4.0), 10)(x, t, 5)
        star = guided_velocity(model, labels, GuidanceConfig(scale=4.0, mode="cfg_zero_star"), 10)(x, t, 5)
    assert torch.allclose(plain, v_u + 4.0 * (v_c - v_u), atol=1e-5)
    s_star = (v_c * v_u).flatten(1).sum(1) / v_u.flatten(1).square().sum(1)
    v_u_scaled = v_u * s_star.view(-1, 1, 1, 1)
    assert torch.allclose(star, v_u_scaled + 4.0 * (v_c - v_u_scaled), atol=1e-5)


def test_optimized_scale_keeps_a_conditional_parallel_to_the_unconditional():
    # If v_c = 2 v_u then s* = 2 and guidance changes nothing, whatever the weight.
    v_u = torch.randn(3, 4, 2, 2)
    assert torch.allclose(combine_guidance(2 * v_u, v_u, 7.0, optimized_scale=True), 2 * v_u, atol=1e-5)
    assert not torch.allclose(combine_guidance(2 * v_u, v_u, 7.0, optimized_scale=False), 2 * v_u, atol=1e-3)


def test_guidance_schedules():
    late = GuidanceConfig(scale=5.0, mode="late")
    assert [late.scale_at(i, 4, 0.0) for i in range(4)] == [1.0, 1.0, 5.0, 5.0]  # (i + 1) / N > 1/2
    linear = GuidanceConfig(scale=5.0, mode="linear")
    assert [linear.scale_at(i, 4, 0.0) for i in range(4)] == [2.0, 3.0, 4.0, 5.0]
    interval = GuidanceConfig(scale=5.0, mode="interval", interval=(0.3, 0.6))
    assert [interval.scale_at(0, 4, t) for t in (0.1, 0.3, 0.5, 0.6, 0.9)] == [1.0, 5.0, 5.0, 5.0, 1.0]
    with pytest.raises(ValueError, match="interval"):
        GuidanceConfig(interval=(0.7, 0.2))


def test_cfg_zero_star_zero_init_and_skipped_unconditional_passes():
    model = CountingModel()
    noise = torch.randn(2, 4, 4, 4)
    labels = torch.tensor([0, 1])
    zero_all = GuidanceConfig(scale=3.0, mode="cfg_zero_star", zero_init_steps=4)
    with torch.no_grad():
        assert torch.equal(sample_euler(guided_velocity(model, labels, zero_all, 4), noise, time_grid(4)), noise)
        assert model.samples_seen == 0  # zero-init steps run no model at all
        # "late" with 4 steps: two conditional-only steps (2 samples each), two batched CFG steps (4 each).
        sample_euler(guided_velocity(model, labels, GuidanceConfig(scale=3.0, mode="late"), 4), noise, time_grid(4))
    assert model.samples_seen == 2 * 2 + 2 * 4
