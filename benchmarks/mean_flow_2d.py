"""MeanFlow against Improved MeanFlow on 2-D data whose guided flow is known exactly.

Two classes, each a Gaussian in 2-D; noise N(0, I); the unconditional data is their even mixture. The
velocity of a Gaussian class along z_t = (1 - t) eps + t x is a closed form, and so is the mixture's (the
classes' velocities weighted by their posterior given z_t). So the guided flow v_u + w (v_c - v_u) can be
integrated to high accuracy (RK4, 400 steps, float64) from any noise: that endpoint is the reference, and
a one-step model's sample from the same noise should land on it. The score of an arm is the root mean
squared distance between the two over 4000 noises (both classes), after N = 1 and 2 steps of
:func:`mean_flow_sample`, averaged over seeds.

Arms (all: an MLP on (z, t, r - t, w - 1) plus a class embedding, ``--steps`` Adam steps at batch 256 with
a cosine learning rate, EMA 0.99, logit-normal times (mean -0.4, std 1), 25% of samples with r != t,
adaptive weight p = 1, 10% label dropout):

- ``mean_flow`` / ``improved``: the JVP's tangent is the sample (guided) velocity / the model's own velocity;
- ``w = 2``: the guidance scale folded into the target, fixed; ``w in [1, 3]``: drawn per sample and given to
  the model, which is then evaluated at w = 1, 2 and 3;
- target velocity ``x - eps`` (trained from data) or ``exact teacher``: distillation (MF-RAE) from a perfect
  flow-matching teacher, the exact velocity, guided with the teacher's own unconditional velocity.

    OMP_NUM_THREADS=1 python benchmarks/mean_flow_2d.py            # 3 seeds, 3000 steps: ~30 min on a busy 2-core CPU
    python benchmarks/mean_flow_2d.py --seeds 1 --steps 300        # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn as nn

from svg_diffusion.diffusion import (
    FlowMatchingConfig,
    MeanFlowConfig,
    draw_mean_flow_inputs,
    mean_flow_loss,
    mean_flow_sample,
    time_grid,
)

MEANS = torch.tensor([[-1.5, 0.0], [1.5, 0.5]], dtype=torch.float64)
COVARIANCES = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]], dtype=torch.float64)
NULL_CLASS = 2
EVALUATED_SCALES = (1.0, 2.0, 3.0)


def class_velocities(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's velocity at z [B, 2], times t [B] ([B, K, 2]), and each class's log density of z_t ([B, K])."""
    t = t.view(-1, 1, 1, 1)
    eye = torch.eye(2, dtype=torch.float64)
    cov_t = (1 - t) ** 2 * eye + t ** 2 * COVARIANCES  # [B, K, 2, 2]: covariance of z_t given the class
    cross = t * COVARIANCES - (1 - t) * eye  # covariance of x - eps with z_t
    centered = z[:, None, :] - t[..., 0] * MEANS  # [B, K, 2]
    solved = torch.linalg.solve(cov_t, centered.unsqueeze(-1)).squeeze(-1)
    velocities = MEANS + (cross @ solved.unsqueeze(-1)).squeeze(-1)
    log_density = -0.5 * (centered * solved).sum(-1) - 0.5 * torch.logdet(cov_t)
    return velocities, log_density


def exact_velocity(z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The velocity of each row's class, or of the even mixture where the label is the null class."""
    velocities, log_density = class_velocities(z, t)
    unconditional = (log_density.softmax(-1).unsqueeze(-1) * velocities).sum(1)
    conditional = velocities[torch.arange(len(z)), labels.clamp(max=NULL_CLASS - 1)]
    return torch.where((labels == NULL_CLASS)[:, None], unconditional, conditional)


def guided_velocity(z: torch.Tensor, t: float, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """v_u + w (v_c - v_u) with the exact velocities."""
    times = torch.full((len(z),), t, dtype=torch.float64)
    unconditional = exact_velocity(z, times, torch.full_like(labels, NULL_CLASS))
    return unconditional + scale * (exact_velocity(z, times, labels) - unconditional)


def exact_teacher(z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
    """A perfect flow-matching teacher for distillation (MF-RAE): the exact velocity, called as a DiT is."""
    labels = y if drop is None else torch.where(drop, NULL_CLASS, y)
    return exact_velocity(z.double(), t.double(), labels).to(z.dtype)


def reference_samples(noise: torch.Tensor, labels: torch.Tensor, scale: float, steps: int = 400) -> torch.Tensor:
    """The guided flow's endpoint from ``noise`` (RK4 in float64)."""
    z, h = noise.double(), 1.0 / steps
    for i in range(steps):
        t = i * h
        k1 = guided_velocity(z, t, labels, scale)
        k2 = guided_velocity(z + h / 2 * k1, t + h / 2, labels, scale)
        k3 = guided_velocity(z + h / 2 * k2, t + h / 2, labels, scale)
        k4 = guided_velocity(z + h * k3, t + h, labels, scale)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


class ConditionalMLP(nn.Module):
    """u(z, t, r | class, w): an MLP on (z, t, r - t, w - 1) with a class embedding added to its first layer."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.inputs = nn.Linear(5, width)
        self.classes = nn.Embedding(NULL_CLASS + 1, width)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))

    def forward(self, z, t, y, drop=None, r=None, guidance=None):
        r = t if r is None else r
        guidance = torch.ones_like(t) if guidance is None else guidance
        if drop is not None:
            y = torch.where(drop, NULL_CLASS, y)
        features = torch.cat([z, t[:, None], (r - t)[:, None], (guidance - 1)[:, None]], dim=1)
        return self.net(self.inputs(features) + self.classes(y))


def sample_data(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 2, (batch,), generator=generator)
    cholesky = torch.linalg.cholesky(COVARIANCES).float()
    x = MEANS.float()[labels] + (cholesky[labels] @ torch.randn(batch, 2, 1, generator=generator)).squeeze(-1)
    return x, labels


def train(config: MeanFlowConfig, steps: int, seed: int, teacher=None, batch: int = 256) -> tuple[nn.Module, float]:
    """The EMA model after ``steps`` steps, and the seconds per step."""
    torch.manual_seed(seed)
    model = ConditionalMLP()
    average = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    flow = FlowMatchingConfig(time_sampling="logit_normal", logit_normal_mean=-0.4, shift=1.0)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        x, labels = sample_data(batch, generator)
        inputs = draw_mean_flow_inputs((batch, 2), flow, config, generator)
        loss = mean_flow_loss(model, x, labels, inputs, config, teacher).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for kept, current in zip(average.parameters(), model.parameters()):
                kept.lerp_(current, 0.01)
    return average, (time.perf_counter() - start) / steps


def error(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor, scale: float, num_steps: int,
          takes_guidance: bool, reference: torch.Tensor) -> float:
    """RMS distance between the model's ``num_steps``-step samples and the exact guided flow's endpoints."""
    def average_velocity(x, t, r):
        return model(x, t, labels, r=r, guidance=torch.full_like(t, scale) if takes_guidance else None)

    sample = mean_flow_sample(average_velocity, noise, time_grid(num_steps))
    return (sample.double() - reference).square().sum(1).mean().sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(12345))
    labels = torch.arange(4000) % 2
    references = {w: reference_samples(noise, labels, w) for w in EVALUATED_SCALES}
    # (tangent, guidance in training, teacher): the exact velocity as a teacher is distillation's best case.
    arms = [(form, guidance, False) for guidance in ("1", "2", "[1, 3]") for form in ("mean_flow", "improved")]
    arms += [(form, "[1, 3]", True) for form in ("mean_flow", "improved")]
    print(f"{args.steps} steps, {args.seeds} seeds; RMS distance to the exact guided flow's endpoint (mean ± std)")
    print("| tangent | guidance in training | target velocity | evaluated at w | 1 step | 2 steps | ms / step |")
    print("|---|---|---|---:|---:|---:|---:|")
    for w in EVALUATED_SCALES:  # for scale: one Euler step of the exact guided velocity
        euler = noise.double() + guided_velocity(noise.double(), 0.0, labels, w)
        distance = (euler - references[w]).square().sum(1).mean().sqrt().item()
        print(f"| (one Euler step of the exact velocity) | | | {w:g} | {distance:.3f} | | |")
    for form, guidance, distil in arms:
        takes_guidance = guidance == "[1, 3]"
        config = MeanFlowConfig(form=form, **({"guidance_range": (1.0, 3.0)} if takes_guidance
                                              else {"guidance_scale": float(guidance)}))
        results: dict[tuple[float, int], list[float]] = {}
        seconds = []
        for seed in range(args.seeds):
            model, per_step = train(config, args.steps, seed, exact_teacher if distil else None)
            seconds.append(per_step)
            for w in EVALUATED_SCALES if takes_guidance else (float(guidance),):
                for num_steps in (1, 2):
                    results.setdefault((w, num_steps), []).append(
                        error(model, noise, labels, w, num_steps, takes_guidance, references[w]))
        label = "as input, w in [1, 3]" if takes_guidance else f"fixed w = {guidance}"
        target = "exact teacher" if distil else "x - eps"
        for w in sorted({w for w, _ in results}):
            cells = [torch.tensor(results[w, n]) for n in (1, 2)]
            spread = [f"{c.mean():.3f} ± {c.std():.3f}" if len(c) > 1 else f"{c.mean():.3f}" for c in cells]
            milliseconds = 1000 * sum(seconds) / len(seconds)
            print(f"| {form} | {label} | {target} | {w:g} | {spread[0]} | {spread[1]} | {milliseconds:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
