"""MeanFlow: the identity and its signs on an exact flow, the JVP and the finite difference, the loss, the warm start,
the sampler."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from svg_diffusion.config import ConfigError, from_dict
from svg_diffusion.diffusion import DiT, DiTConfig, FlowMatchingConfig, combine_guidance, flow_matching_loss, time_grid
from svg_diffusion.diffusion.mean_flow import (
    MeanFlowConfig,
    MeanFlowInputs,
    draw_mean_flow_inputs,
    finite_difference_derivative,
    guided_average_velocity,
    mean_flow_loss,
    mean_flow_target,
    teacher_average_velocity,
    total_derivative,
)
from svg_diffusion.diffusion.solvers import mean_flow_sample
from svg_diffusion.diffusion.transformer import warm_start_mean_flow
from svg_diffusion.errors import SVGError

from test_diffusion import TINY, random_dit

pytestmark = pytest.mark.usefixtures("one_thread")

NEW_EMBEDDERS = ("interval_embedder.", "guidance_embedder.")
SWITCHES = [{}, {"rope": True, "norm": "rmsnorm", "mlp": "swiglu", "patch_size": 2}]  # the DiT's block variants


def dit_batch(batch: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 4, 4, generator=g)
    return x, torch.randint(0, 3, (batch,), generator=g), g


# Data x ~ N(MU, COV) in 2-D, noise N(0, I). z_t is Gaussian with covariance (1 - t)^2 I + t^2 COV, and the
# flow is affine: in the eigenbasis of COV each coordinate of z_t - t MU scales with the std
# s_t = sqrt((1 - t)^2 + t^2 lambda). So z_r = r MU + (s_r / s_t) (z_t - t MU) there, which gives the exact
# average velocity (z_r - z_t) / (r - t), and the velocity is MU + (d log s_t / dt) (z_t - t MU).
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
EIGENVALUES, EIGENVECTORS = torch.linalg.eigh(COV)


def _std(t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, 1)
    return ((1 - t) ** 2 + t ** 2 * EIGENVALUES).sqrt()


def exact_average_velocity(z: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    coords = (z - t.view(-1, 1) * MU) @ EIGENVECTORS
    z_r = r.view(-1, 1) * MU + (coords * _std(r) / _std(t)) @ EIGENVECTORS.T
    return (z_r - z) / (r - t).view(-1, 1)


def exact_velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, 1)
    log_std_rate = (t * EIGENVALUES - (1 - t)) / _std(t) ** 2
    return MU + ((z - t * MU) @ EIGENVECTORS * log_std_rate) @ EIGENVECTORS.T


def test_identity_and_its_signs_on_the_exact_gaussian_flow():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = 0.9 * torch.rand(64, generator=g, dtype=torch.float64)
    r = t + (1 - t) * (0.05 + 0.95 * torch.rand(64, generator=g, dtype=torch.float64))
    # u = v + (r - t) du/dt, du/dt along the flow (tangent: the exact velocity), holds for the exact u.
    velocity = exact_velocity(z, t)
    u, du_dt = total_derivative(lambda z, t: exact_average_velocity(z, t, r), z, t, velocity)
    target = mean_flow_target(velocity, du_dt, t, r)
    torch.testing.assert_close(target, u, rtol=1e-10, atol=1e-10)
    # The other sign (u = v - (r - t) du/dt) is far off: the test can tell the two apart.
    assert (velocity - (r - t)[:, None] * du_dt - u).abs().max() > 1
    # u(z, t, r) tends to v(z, t) as r -> t.
    torch.testing.assert_close(exact_average_velocity(z, t, t + 1e-7), velocity, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_steps, shift", [(1, 1.0), (3, 1.0), (5, 3.0)])
def test_sampler_is_exact_with_the_exact_average_velocity(num_steps, shift):
    noise = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = time_grid(num_steps, shift)
    sample = mean_flow_sample(lambda x, t, r: exact_average_velocity(x, t.double(), r.double()), noise, times)
    sqrt_cov = EIGENVECTORS @ torch.diag(EIGENVALUES.sqrt()) @ EIGENVECTORS.T
    torch.testing.assert_close(sample, MU + noise @ sqrt_cov, rtol=0, atol=1e-6)


class AverageVelocityMLP(nn.Module):
    """u(z, t, r) of 2-D points: an MLP on (z, t, r - t), the DiT's inputs in small."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, z, t, y, drop=None, r=None, guidance=None):
        r = t if r is None else r
        return self.net(torch.cat([z, t[:, None], (r - t)[:, None]], dim=1))


@pytest.mark.parametrize("form", ["mean_flow", "improved"])
def test_trained_one_step_sampler_matches_gaussian_data(form):
    torch.manual_seed(0)
    model, batch, steps = AverageVelocityMLP(), 256, 2000
    average = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    flow = FlowMatchingConfig(time_sampling="logit_normal", logit_normal_mean=-0.4, shift=1.0, class_dropout_prob=0.0)
    config = MeanFlowConfig(form=form)
    g = torch.Generator().manual_seed(0)
    sqrt_cov = torch.linalg.cholesky(COV).float()
    labels = torch.zeros(batch, dtype=torch.long)
    for _ in range(steps):
        x = MU.float() + torch.randn(batch, 2, generator=g) @ sqrt_cov.T
        loss = mean_flow_loss(model, x, labels, draw_mean_flow_inputs((batch, 2), flow, config, g), config).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for kept, current in zip(average.parameters(), model.parameters()):
                kept.lerp_(current, 0.01)
    noise = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1))
    sample = mean_flow_sample(lambda x, t, r: average(x, t, None, r=r), noise, time_grid(1))
    # Sampling error of 20000 draws: ~0.01 on the mean, ~0.01-0.02 on the covariance. Measured at these seeds:
    # mean off by 0.012 (mean_flow) and 0.038 (improved), covariance by 0.056 and 0.074. For scale: one Euler
    # step of the exact velocity puts every sample on MU (covariance 0).
    torch.testing.assert_close(sample.mean(0), MU.float(), rtol=0, atol=0.08)
    torch.testing.assert_close(torch.cov(sample.T), COV.float(), rtol=0, atol=0.12)


def test_config_validation():
    assert MeanFlowConfig() == from_dict(MeanFlowConfig, {})
    from_dict(MeanFlowConfig, {"form": "improved", "guidance_range": [1.0, 4.0]})
    from_dict(MeanFlowConfig, {"derivative": "finite_difference", "finite_difference_step": 1e-3})
    bad = [
        ({"form": "shortcut"}, "expected one of"),
        ({"derivative": "central"}, "expected one of"),
        ({"finite_difference_step": 0}, "finite_difference_step"),
        ({"finite_difference_step": -5e-3}, "finite_difference_step"),
        ({"interval_fraction": 1.5}, "interval_fraction"),
        ({"adaptive_weight_power": -1}, "adaptive_weight_power"),
        ({"adaptive_weight_eps": 0}, "adaptive_weight_eps"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"guidance_range": [3.0, 1.0]}, "guidance_range"),
        ({"guidance_range": [1.0, 3.0], "guidance_scale": 2.0}, "exclude each other"),
        ({"grid_fraction": -0.1}, "grid_fraction"),
        ({"grid_steps": []}, "grid_steps"),
        ({"grid_steps": [1, 0]}, "grid_steps"),
        ({"grid_shift": 0}, "grid_shift"),
        ({"grid_fraction": 0.5, "grid_teacher_steps": -1}, "grid_teacher_steps"),
        ({"grid_teacher_steps": 4}, "set grid_fraction"),
    ]
    for values, message in bad:
        with pytest.raises(ConfigError, match=message):
            from_dict(MeanFlowConfig, values)


def test_draw_mean_flow_inputs():
    flow = FlowMatchingConfig(time_sampling="logit_normal", shift=2.0)
    config = MeanFlowConfig(interval_fraction=0.25, guidance_range=(1.0, 3.0))
    inputs = draw_mean_flow_inputs((4000, 2, 3, 3), flow, config, torch.Generator().manual_seed(0))
    again = draw_mean_flow_inputs((4000, 2, 3, 3), flow, config, torch.Generator().manual_seed(0))
    for name in ("noise", "t", "r", "drop", "guidance"):
        assert torch.equal(getattr(inputs, name), getattr(again, name))
    assert inputs.t.dtype == inputs.r.dtype == inputs.guidance.dtype == torch.float32
    assert (inputs.r >= inputs.t).all() and inputs.t.min() >= 0 and inputs.r.max() <= 1
    assert abs((inputs.r > inputs.t).float().mean().item() - 0.25) < 0.03
    assert abs(inputs.drop.float().mean().item() - 0.1) < 0.02
    assert (inputs.guidance[inputs.drop] == 1).all()
    kept = inputs.guidance[~inputs.drop]
    assert kept.min() >= 1 and kept.max() <= 3 and kept.std() > 0.5
    rows = inputs.rows(10, 20)
    assert isinstance(rows, MeanFlowInputs) and torch.equal(rows.r, inputs.r[10:20])
    # A fixed scale is every row's scale but the dropped ones'.
    fixed = draw_mean_flow_inputs((500, 2), flow, MeanFlowConfig(guidance_scale=2.5), torch.Generator().manual_seed(0))
    assert torch.equal(fixed.guidance, torch.where(fixed.drop, 1.0, 2.5))


def test_sampler_grid_intervals_are_the_few_step_samplers_steps():
    flow = FlowMatchingConfig(shift=1.0)
    plain = MeanFlowConfig(interval_fraction=0.5)
    config = dataclasses.replace(plain, grid_fraction=0.5, grid_steps=(1, 2, 4), grid_shift=2.0)
    before = draw_mean_flow_inputs((8000, 2), flow, plain, torch.Generator().manual_seed(0))
    inputs = draw_mean_flow_inputs((8000, 2), flow, config, torch.Generator().manual_seed(0))
    # The grid's draws come after all others: noise, drops, guidance and the rows off the grid are unchanged.
    for name in ("noise", "drop", "guidance"):
        assert torch.equal(getattr(inputs, name), getattr(before, name))
    moved = (inputs.t != before.t) | (inputs.r != before.r)
    assert torch.equal(inputs.r == inputs.t, before.r == before.t)  # the same rows have r != t
    assert not moved[before.r == before.t].any()
    assert torch.equal(inputs.on_grid, moved) and not before.on_grid.any()  # on_grid marks the moved rows
    assert abs(moved.float().mean().item() - 0.25) < 0.03
    # Every moved interval is one step of time_grid(N, 2) for N in (1, 2, 4), each of them drawn.
    steps = {(a, b) for n in (1, 2, 4) for a, b in zip(time_grid(n, 2.0).tolist(), time_grid(n, 2.0)[1:].tolist())}
    drawn = set(zip(inputs.t[moved].tolist(), inputs.r[moved].tolist()))
    assert drawn == steps
    one_step = ((inputs.t == 0) & (inputs.r == 1)).float().mean().item()
    assert abs(one_step - 0.25 / 3) < 0.015  # two independent uniform times almost never give (0, 1)


def test_teacher_average_velocity_is_the_teachers_euler_steps_on_the_finer_grid():
    teacher = random_dit(seed=5)
    x, y, _ = dit_batch(batch=6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    drop = torch.tensor([False, True, False, False, True, False])
    guidance = torch.where(drop, 1.0, torch.tensor([1.0, 1.0, 2.0, 3.0, 1.0, 1.5]))
    # Rows on steps of 1-, 2- and 4-step grids at shift 2, each taken in 3 Euler steps.
    coarse = {n: time_grid(n, 2.0) for n in (1, 2, 4)}
    steps = [(1, 0), (2, 0), (2, 1), (4, 1), (4, 3), (1, 0)]
    t = torch.stack([coarse[n][i] for n, i in steps])
    r = torch.stack([coarse[n][i + 1] for n, i in steps])
    z = (1 - t.view(-1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1) * x
    got = teacher_average_velocity(teacher, z, t, r, y, drop, guidance, steps=3, shift=2.0)
    null = torch.ones_like(drop)
    for row, (n, i) in enumerate(steps):
        fine = time_grid(3 * n, 2.0)[3 * i: 3 * i + 4]  # the step [t, r] of the N-step grid, in the 3N-step grid
        state = z[row: row + 1]
        with torch.no_grad():
            for now, later in zip(fine[:-1], fine[1:]):
                s = now.view(1)
                v = combine_guidance(teacher(state, s, y[row: row + 1], drop=drop[row: row + 1]),
                                     teacher(state, s, y[row: row + 1], drop=null[row: row + 1]),
                                     guidance[row].item(), optimized_scale=False)
                state = state + (later - now) * v
        torch.testing.assert_close(got[row: row + 1], (state - z[row: row + 1]) / (r[row] - t[row]),
                                   rtol=1e-5, atol=1e-5)
    # One step is the guided velocity at (z, t) itself.
    with torch.no_grad():
        velocity = combine_guidance(teacher(z, t, y, drop=drop), teacher(z, t, y, drop=null),
                                    guidance.view(-1, 1, 1, 1), optimized_scale=False)
    torch.testing.assert_close(teacher_average_velocity(teacher, z, t, r, y, drop, guidance, steps=1, shift=2.0),
                               velocity, rtol=1e-5, atol=1e-5)


def test_grid_rows_regress_on_the_teachers_steps_and_the_others_keep_the_identity():
    model = random_dit(interval_input=True, guidance_input=True)
    teacher = random_dit(seed=5)
    x, y, _ = dit_batch(batch=40)
    identity = MeanFlowConfig(interval_fraction=0.6, grid_fraction=0.5, grid_shift=2.0, guidance_range=(1.0, 3.0),
                              adaptive_weight_power=0.0, derivative="finite_difference")
    stepped = dataclasses.replace(identity, grid_teacher_steps=2)
    inputs = draw_mean_flow_inputs(x.shape, FlowMatchingConfig(class_dropout_prob=0.2), identity,
                                   torch.Generator().manual_seed(0))
    grid = inputs.on_grid
    assert grid.any() and (~grid & (inputs.r > inputs.t)).any() and not grid[inputs.r == inputs.t].any()
    per_row = {}
    for name, config in (("identity", identity), ("stepped", stepped)):
        # The per-row errors, from the loss of each row alone (p = 0: the loss is the mean of the rows' errors).
        per_row[name] = torch.stack([mean_flow_loss(model, x[i: i + 1], y[i: i + 1], inputs.rows(i, i + 1), config,
                                                    teacher=teacher).loss.detach() for i in range(len(x))])
    assert torch.equal(per_row["stepped"][~grid], per_row["identity"][~grid])
    z = (1 - inputs.t.view(-1, 1, 1, 1)) * inputs.noise + inputs.t.view(-1, 1, 1, 1) * x
    with torch.no_grad():
        u = model(z, inputs.t, y, drop=inputs.drop, r=inputs.r, guidance=inputs.guidance)
    target = teacher_average_velocity(teacher, z[grid], inputs.t[grid], inputs.r[grid], y[grid], inputs.drop[grid],
                                      inputs.guidance[grid], steps=2, shift=2.0)
    torch.testing.assert_close(per_row["stepped"][grid], (u[grid] - target).square().flatten(1).mean(1),
                               rtol=1e-5, atol=1e-6)
    # The whole batch's loss is the mean of its rows'; without a teacher the option is an error.
    torch.testing.assert_close(mean_flow_loss(model, x, y, inputs, stepped, teacher=teacher).loss,
                               per_row["stepped"].mean(), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="teacher"):
        mean_flow_loss(model, x, y, inputs, stepped)


def test_plain_dit_is_unchanged_and_refuses_the_new_inputs():
    plain = random_dit()
    assert not any(name.startswith(NEW_EMBEDDERS) for name in plain.state_dict())
    both = DiT(DiTConfig(**TINY, interval_input=True, guidance_input=True))
    added = set(both.state_dict()) - set(plain.state_dict())
    assert set(both.state_dict()) >= set(plain.state_dict())
    assert added == {f"{e}mlp.{i}.{p}" for e in NEW_EMBEDDERS for i in (0, 2) for p in ("weight", "bias")}
    x, y, _ = dit_batch()
    t = torch.rand(len(x))
    with pytest.raises(SVGError, match="no interval input"):
        plain(x, t, y, r=t)
    with pytest.raises(SVGError, match="no guidance input"):
        plain(x, t, y, guidance=torch.ones_like(t))


@pytest.mark.parametrize("switches", SWITCHES)
def test_explicit_attention_path_equals_the_fast_path(switches):
    model = random_dit(**switches, interval_input=True)
    x, y, g = dit_batch()
    t, r = torch.rand(len(x), generator=g), torch.rand(len(x), generator=g)
    fast = model(x, t, y, r=r)
    with sdpa_kernel(SDPBackend.MATH):
        explicit = model(x, t, y, r=r)
    torch.testing.assert_close(explicit, fast, rtol=1e-5, atol=1e-5)


# Largest relative L2 error of a row of the finite difference against the JVP, at the default step. float32:
# rounding, measured up to 1.5e-3. float64: the O(step^2) error plus ~1e-7 / step because timestep embeddings
# round t to float32, measured up to 3e-5 at the ends of time too, where a stencil shifted inside [0, 1]
# (first order) is off by 3e-3 to 6e-3.
FINITE_DIFFERENCE_ERROR = {torch.float32: 5e-3, torch.float64: 2e-4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("switches", SWITCHES)
def test_jvp_equals_the_finite_difference_along_the_tangent_at_the_ends_of_time_too(switches, dtype):
    model = random_dit(**switches, interval_input=True, guidance_input=True).to(dtype)
    x, y, g = dit_batch()
    z = x.to(dtype)
    t = torch.cat([torch.tensor([0.0, 1.0]), 0.2 + 0.5 * torch.rand(len(x) - 2, generator=g)]).to(dtype)
    r = (t + 0.2).clamp(max=1)
    guidance = torch.full_like(t, 2.0)
    tangent = torch.randn(z.shape, generator=g).to(dtype)

    def average_velocity(z, t, rows=slice(None)):
        return model(z, t, y[rows], r=r[rows], guidance=guidance[rows])

    u, du_dt = total_derivative(average_velocity, z, t, tangent)
    torch.testing.assert_close(u, average_velocity(z, t))
    assert du_dt.abs().max() > 0.1
    # At t = 0 and t = 1 the difference steps out of [0, 1] and stays second-order accurate.
    finite = finite_difference_derivative(average_velocity, z, t, tangent, MeanFlowConfig.finite_difference_step,
                                          torch.arange(len(x)))
    error = (finite - du_dt).flatten(1).norm(dim=1) / du_dt.flatten(1).norm(dim=1)
    assert error.max() < FINITE_DIFFERENCE_ERROR[dtype], error


def test_finite_difference_runs_outside_autocast():
    # In bf16 the difference of two outputs over 2 * step = 1e-2 is mostly rounding: it must not be autocast.
    model = random_dit(interval_input=True)
    x, y, g = dit_batch()
    t, tangent, rows = torch.rand(len(x), generator=g), torch.randn(x.shape, generator=g), torch.tensor([4, 1])
    r = (t + 0.2).clamp(max=1)

    def average_velocity(z, t, rows):
        return model(z, t, y[rows], r=r[rows])

    plain = finite_difference_derivative(average_velocity, x, t, tangent, 5e-3, rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = finite_difference_derivative(average_velocity, x, t, tangent, 5e-3, rows)
    assert plain.shape == (2, *x.shape[1:]) and torch.equal(autocast, plain)


@pytest.mark.parametrize("form", ["mean_flow", "improved"])
def test_finite_difference_loss_is_close_to_the_jvp_loss(form):
    model = random_dit(interval_input=True, guidance_input=True)
    x, y, _ = dit_batch(batch=8)
    # p = 0: the loss is the squared error itself (p = 1 makes it ~1 whatever the target).
    jvp = MeanFlowConfig(form=form, interval_fraction=0.5, guidance_range=(1.0, 3.0), adaptive_weight_power=0.0)
    finite = dataclasses.replace(jvp, derivative="finite_difference")
    inputs = draw_mean_flow_inputs(x.shape, FlowMatchingConfig(class_dropout_prob=0.3), jvp,
                                   torch.Generator().manual_seed(0))
    # The difference is taken on the rows with an interval only, with their own labels, drops and scales.
    assert (inputs.r > inputs.t).any() and (inputs.r == inputs.t).any() and inputs.drop.any()
    losses, grads = [], []
    for config in (jvp, finite):
        losses.append(mean_flow_loss(model, x, y, inputs, config).loss)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(losses[-1], list(model.parameters()))]))
    # Measured: 3e-6 and 9e-5 apart (mean_flow, improved), the gradients 2e-5 and 2e-4; a step of 0.05 instead
    # moves the loss by 3e-4 and 1e-2.
    torch.testing.assert_close(losses[1], losses[0], rtol=5e-4, atol=0)
    assert (grads[1] - grads[0]).norm() < 2e-3 * grads[0].norm()


def test_loss_at_r_equal_t_is_the_flow_matching_loss():
    model = random_dit(interval_input=True)
    x, y, _ = dit_batch()
    inputs = draw_mean_flow_inputs(x.shape, FlowMatchingConfig(class_dropout_prob=0.5),
                                   MeanFlowConfig(interval_fraction=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(inputs.r, inputs.t) and inputs.drop.any()
    flow_loss = flow_matching_loss(model, x, y, inputs.noise, inputs.t, inputs.drop)
    flow_grads = torch.autograd.grad(flow_loss, list(model.parameters()))
    for form in ("mean_flow", "improved"):
        plain = mean_flow_loss(model, x, y, inputs, MeanFlowConfig(form=form, adaptive_weight_power=0.0))
        torch.testing.assert_close(plain.loss, flow_loss, rtol=1e-5, atol=0)
        torch.testing.assert_close(plain.mse, flow_loss, rtol=1e-5, atol=0)
        for mine, theirs in zip(torch.autograd.grad(plain.loss, list(model.parameters())), flow_grads):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
        weighted = mean_flow_loss(model, x, y, inputs, MeanFlowConfig(form=form))
        torch.testing.assert_close(weighted.mse, flow_loss, rtol=1e-5, atol=0)
        assert 0.9 < weighted.loss.item() < 1  # p = 1: every sample's error over itself plus c


def test_improved_form_takes_the_derivative_along_the_models_own_velocity():
    # With a teacher equal to the model at r = t, MeanFlow's tangent (the teacher's velocity) is the
    # improved form's (the model's own velocity), and so are the targets.
    model = random_dit(interval_input=True)
    x, y, _ = dit_batch()
    inputs = draw_mean_flow_inputs(x.shape, FlowMatchingConfig(), MeanFlowConfig(interval_fraction=1.0),
                                   torch.Generator().manual_seed(0))
    assert (inputs.r > inputs.t).all()

    def own_velocity(z, t, y, drop=None):
        return model(z, t, y, drop=drop, r=t)

    config = MeanFlowConfig(adaptive_weight_power=0.0)
    mean_flow = mean_flow_loss(model, x, y, inputs, config, teacher=own_velocity).loss
    improved = mean_flow_loss(model, x, y, inputs, MeanFlowConfig(form="improved", adaptive_weight_power=0.0),
                              teacher=own_velocity).loss
    torch.testing.assert_close(improved, mean_flow, rtol=1e-5, atol=0)
    # ... and differs from the sample-velocity tangent of plain MeanFlow.
    assert abs(mean_flow_loss(model, x, y, inputs, config).loss.item() - mean_flow.item()) > 1e-3


@pytest.mark.parametrize("guidance_input", [False, True])
def test_guidance_folded_into_the_target(guidance_input):
    model = random_dit(interval_input=True, guidance_input=guidance_input)
    teacher = random_dit(seed=5)
    x, y, _ = dit_batch(batch=40)
    flow = FlowMatchingConfig(class_dropout_prob=0.3)
    config = MeanFlowConfig(interval_fraction=0.0, adaptive_weight_power=0.0,
                            **({"guidance_range": (1.0, 4.0)} if guidance_input else {"guidance_scale": 2.5}))
    inputs = draw_mean_flow_inputs(x.shape, flow, config, torch.Generator().manual_seed(0))
    assert inputs.drop.any() and not inputs.drop.all()
    z = (1 - inputs.t.view(-1, 1, 1, 1)) * inputs.noise + inputs.t.view(-1, 1, 1, 1) * x
    model_guidance = inputs.guidance if guidance_input else None
    with torch.no_grad():
        u = model(z, inputs.t, y, drop=inputs.drop, r=inputs.t, guidance=model_guidance)
        null = torch.ones_like(inputs.drop)
        scale = inputs.guidance.view(-1, 1, 1, 1)
        # Self-guidance: w (x - eps) + (1 - w) u_uncond, where u_uncond is the model unguided, at r = t.
        unguided = None if model_guidance is None else torch.ones_like(inputs.t)
        unconditional = model(z, inputs.t, y, drop=null, r=inputs.t, guidance=unguided)
        own = combine_guidance(x - inputs.noise, unconditional, scale, optimized_scale=False)
        # Distillation (MF-RAE): the teacher's guided velocity v_u + w (v_c - v_u).
        distilled = combine_guidance(teacher(z, inputs.t, y, drop=inputs.drop), teacher(z, inputs.t, y, drop=null),
                                     scale, optimized_scale=False)
    torch.testing.assert_close(mean_flow_loss(model, x, y, inputs, config).loss, (u - own).square().mean(),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(mean_flow_loss(model, x, y, inputs, config, teacher=teacher).loss,
                               (u - distilled).square().mean(), rtol=1e-5, atol=0)
    # Dropped rows are the unconditional model's: unguided, x - eps.
    dropped = inputs.drop
    torch.testing.assert_close(own[dropped], (x - inputs.noise)[dropped])


@pytest.mark.parametrize("switches", SWITCHES)
def test_loss_runs_under_bf16_autocast(switches):
    model = random_dit(**switches, interval_input=True)
    x, y, _ = dit_batch()
    config = MeanFlowConfig(form="improved", interval_fraction=0.5)
    inputs = draw_mean_flow_inputs(x.shape, FlowMatchingConfig(), config, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = mean_flow_loss(model, x, y, inputs, config)
    reference = mean_flow_loss(model, x, y, inputs, config)
    assert result.loss.dtype == torch.float32
    torch.testing.assert_close(result.mse, reference.mse, rtol=0.1, atol=0)
    result.loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_warm_start_at_r_equal_t_is_the_flow_matching_model_exactly():
    old = random_dit(seed=3)
    old_state = {k: v.clone() for k, v in old.state_dict().items()}
    warm = warm_start_mean_flow(old, guidance_input=True)
    assert warm.config.interval_input and warm.config.guidance_input and not old.config.interval_input
    assert all(torch.equal(warm.state_dict()[k], v) for k, v in old_state.items())
    x, y, g = dit_batch()
    t = torch.rand(len(x), generator=g)
    expected = old(x, t, y)
    assert torch.equal(warm(x, t, y, r=t), expected)
    assert torch.equal(warm(x, t, y), expected)
    assert torch.equal(warm(x, t, y, r=t, guidance=torch.full_like(t, 3.0)), expected)
    # Fine-tuning moves the new embedders; the old model stays as it was.
    loss = mean_flow_loss(warm, x, y, draw_mean_flow_inputs(x.shape, FlowMatchingConfig(), MeanFlowConfig(), g),
                          MeanFlowConfig()).loss
    loss.backward()
    assert warm.interval_embedder.mlp[2].weight.grad.abs().sum() > 0
    assert all(torch.equal(old.state_dict()[k], v) for k, v in old_state.items())
    # From scratch: the same architecture, the new embedders zero at their output.
    scratch = DiT(warm.config)
    assert scratch.interval_embedder.mlp[2].weight.abs().sum() == 0


def test_guided_average_velocity_and_the_steps_it_takes():
    model = random_dit(interval_input=True, guidance_input=True)
    x, y, g = dit_batch()
    calls = []

    def recording(x, t, r):
        calls.append((t[0].item(), r[0].item()))
        return guided_average_velocity(model, y, guidance_scale=2.0)(x, t, r)

    times = time_grid(3, shift=2.0)
    sample = mean_flow_sample(recording, x, times)
    grid = times.tolist()
    assert calls == list(zip(grid[:-1], grid[1:]))
    expected = x
    for t, r in zip(grid[:-1], grid[1:]):
        t_batch, r_batch = torch.full((len(x),), t), torch.full((len(x),), r)
        expected = expected + (times[grid.index(r)] - times[grid.index(t)]).item() * model(
            expected, t_batch, y, r=r_batch, guidance=torch.full_like(t_batch, 2.0))
    torch.testing.assert_close(sample, expected, rtol=0, atol=0)
    with pytest.raises(SVGError, match="no guidance input"):
        guided_average_velocity(random_dit(interval_input=True), y, guidance_scale=2.0)
    with pytest.raises(SVGError, match="time grid"):
        mean_flow_sample(recording, x, torch.tensor([0.0, 0.5]))


def test_a_latent_that_turns_nan_stops_mean_flow_sampling_at_its_step():
    def average_velocity(x, t, r):  # finite, except in the second step
        return torch.full_like(x, float("nan") if t[0] == times[1] else 1.0)

    times = time_grid(3, shift=2.0)
    with pytest.raises(SVGError, match=r"NaN or infinite after step 2 of 3 \(t = "):
        mean_flow_sample(average_velocity, torch.zeros(2, 4), times)


def test_loss_runs_through_distributed_data_parallel(tmp_path):
    # Forward-mode AD with dual tensors passes through DDP's forward (torch.func.jvp's wrapped tensors do not);
    # so does the finite difference's forward without gradient, after the one with.
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = random_dit(interval_input=True)
        wrapped = DistributedDataParallel(model)
        x, y, _ = dit_batch()
        for form, derivative in (("mean_flow", "jvp"), ("improved", "jvp"), ("mean_flow", "finite_difference")):
            config = MeanFlowConfig(form=form, derivative=derivative, interval_fraction=0.5, guidance_scale=2.0)
            inputs = draw_mean_flow_inputs(x.shape, FlowMatchingConfig(), config, torch.Generator().manual_seed(0))
            losses, grads = [], []
            for module in (wrapped, model):
                model.zero_grad()
                losses.append(mean_flow_loss(module, x, y, inputs, config).loss)
                losses[-1].backward()
                grads.append([p.grad.clone() for p in model.parameters()])
            torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
            for through_ddp, direct in zip(*grads):
                torch.testing.assert_close(through_ddp, direct, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()
