"""What benchmarks/speed.py times: the ladder of sampling and training paths, the DiT at the paper's latent
shape, one guided Euler sampling run and one step of the diffusion trainer's computation.

Each path is a set of switches; each ladder adds one switch per row, so every factor shows on its own.
tests/test_speed_paths.py checks every path against the plain one. The last four training rows change the
objective instead: the MeanFlow step on the same DiT, warm-started, first the objective alone, then the
shipped recipe (the guidance scale as an input, the flow-matching DiT as teacher), each with du/dt by the
JVP and by a finite difference; speed.py reports their cost against the flow-matching row they build on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from svg_diffusion.autoencoder import SVGAutoencoder
from svg_diffusion.diffusion import (
    DiT,
    DiTConfig,
    FlowMatchingConfig,
    GuidanceConfig,
    MeanFlowConfig,
    draw_flow_inputs,
    draw_mean_flow_inputs,
    flow_matching_loss,
    guided_velocity,
    mean_flow_loss,
    sample_euler,
    warm_start_mean_flow,
)
from svg_diffusion.diffusion.latents import LatentStatistics, encode_latents

LATENT_CHANNELS, LATENT_SIZE, IMAGE_SIZE = 392, 16, 256  # the paper's ImageNet-256 latents
NUM_CLASSES = 1000
SAMPLING_STEPS = 25
SAMPLING_SHIFT = 1 / 0.15  # the paper's sampling shift (public s = 0.15)
GUIDANCE = GuidanceConfig(scale=1.5)  # constant: both branches on every step
FLOW = FlowMatchingConfig()
MEAN_FLOW = MeanFlowConfig()  # the objective alone: x - eps as the target velocity, no guidance
# The shipped MeanFlow recipe (docs/diffusion.md, "Which form we ship"): w drawn per sample as a model input, a
# teacher's guided velocity as the target, so two teacher forwards more per step.
MEAN_FLOW_RECIPE = MeanFlowConfig(guidance_range=(1.0, 3.0))


@dataclass(frozen=True)
class SamplingPath:
    name: str
    batched_cfg: bool = False  # one forward of 2B (conditional + unconditional) instead of two of B
    inference_mode: bool = False  # torch.inference_mode instead of the samplers' torch.no_grad
    compiled: bool = False  # compile_for_sampling: inductor, weights frozen, dynamic batch on the CPU
    bf16: bool = False  # bfloat16 autocast (a looser tolerance than fp32)


PLAIN_SAMPLING = SamplingPath("plain: 2 CFG passes, fp32, eager")
BATCHED = replace(PLAIN_SAMPLING, name="batched CFG", batched_cfg=True)
INFERENCE = replace(BATCHED, name="+ inference_mode", inference_mode=True)
SAMPLING_PATHS = [
    PLAIN_SAMPLING,
    BATCHED,
    INFERENCE,
    replace(INFERENCE, name="+ compile (fp32)", compiled=True),
    replace(INFERENCE, name="+ compile + bf16", compiled=True, bf16=True),
]


@dataclass(frozen=True)
class TrainingPath:
    name: str
    cached_latents: bool = False  # read the cache instead of running the frozen encoder + residual ViT
    bf16: bool = False  # bfloat16 autocast on the DiT (online encoding stays fp32, as in the trainer)
    compiled: bool = False  # torch.compile of the DiT
    fused_adamw: bool = False  # AdamW(fused=True)
    mean_flow: bool = False  # the MEAN_FLOW objective on the warm-started DiT
    distilled: bool = False  # with mean_flow: MEAN_FLOW_RECIPE instead, the teacher the flow-matching DiT
    finite_difference: bool = False  # with mean_flow: du/dt by a finite difference instead of the JVP


PLAIN_TRAINING = TrainingPath("plain: online encoding, fp32")
CACHED_BF16 = TrainingPath("cached latents + bf16", cached_latents=True, bf16=True)
MEAN_FLOW_TRAINING = replace(CACHED_BF16, name="cached latents + bf16, MeanFlow objective", mean_flow=True)
MEAN_FLOW_RECIPE_TRAINING = replace(MEAN_FLOW_TRAINING, name="+ teacher, guidance scale as an input", distilled=True)
MEAN_FLOW_FD_TRAINING = replace(MEAN_FLOW_TRAINING, name="cached latents + bf16, MeanFlow objective, finite difference",
                                finite_difference=True)
MEAN_FLOW_RECIPE_FD_TRAINING = replace(MEAN_FLOW_RECIPE_TRAINING,
                                       name="+ teacher, guidance scale as an input, finite difference",
                                       finite_difference=True)
OPTIMIZED_TRAINING = replace(CACHED_BF16, name="+ compile + fused AdamW", compiled=True, fused_adamw=True)
TRAINING_PATHS = [
    PLAIN_TRAINING,
    TrainingPath("cached latents", cached_latents=True),
    TrainingPath("bf16", bf16=True),
    CACHED_BF16,
    OPTIMIZED_TRAINING,
    MEAN_FLOW_TRAINING,
    MEAN_FLOW_RECIPE_TRAINING,
    MEAN_FLOW_FD_TRAINING,
    MEAN_FLOW_RECIPE_FD_TRAINING,
]


def dit_config(size: str) -> DiTConfig:
    return DiTConfig.from_size(size, in_channels=LATENT_CHANNELS, input_size=LATENT_SIZE, num_classes=NUM_CLASSES)


def build_dit(size: str, device: torch.device, seed: int = 0) -> DiT:
    """A DiT with random weights everywhere: adaLN-Zero's zero layers too, so outputs are not all zero."""
    torch.manual_seed(seed)
    model = DiT(dit_config(size))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.02)
    return model.to(device)


def forward_flops(size: str) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of the DiT per sample, counted on the meta device."""
    with torch.device("meta"):
        model = DiT(dit_config(size))
        x = torch.randn(1, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
        t, y = torch.rand(1), torch.zeros(1, dtype=torch.long)
    forward, training = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with forward:
        model(x, t, y)
    with training:
        model(x, t, y).square().mean().backward()
    return float(forward.get_total_flops()), float(training.get_total_flops())


def mean_flow_objective(path: TrainingPath) -> MeanFlowConfig:
    objective = MEAN_FLOW_RECIPE if path.distilled else MEAN_FLOW
    return replace(objective, derivative="finite_difference") if path.finite_difference else objective


def mean_flow_flops(size: str, path: TrainingPath) -> float:
    """FLOPs of a MeanFlow path's training step per sample (the JVP pass or the forward and the finite
    difference's, the backward and, distilled, the teacher's forwards), counted on the meta device.

    The finite difference's forward takes the rows with r != t, which the meta device cannot pick (it has no
    data): counted with every row in it (torch's opt-in meta ``nonzero``), less the expected
    1 - ``interval_fraction`` of its rows that a step leaves out.
    """
    objective = mean_flow_objective(path)
    with torch.device("meta"):
        teacher = DiT(dit_config(size))
        model = warm_start_mean_flow(teacher, guidance_input=True)
        x, y = torch.randn(1, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE), torch.zeros(1, dtype=torch.long)
        draws = draw_mean_flow_inputs(tuple(x.shape), FLOW, objective, None, "meta")
    step, forward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with step, fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        mean_flow_loss(model, x, y, draws, objective, teacher if path.distilled else None).loss.backward()
    if not path.finite_difference:
        return float(step.get_total_flops())
    with forward, torch.no_grad():
        model(x, draws.t, y, r=draws.r, guidance=draws.guidance)
    left_out = 2 * (1 - objective.interval_fraction) * forward.get_total_flops()  # both points of those rows
    return float(step.get_total_flops() - left_out)


def sample_latents(model: nn.Module, path: SamplingPath, noise: torch.Tensor, labels: torch.Tensor,
                   times: torch.Tensor) -> torch.Tensor:
    """Euler sampling with CFG over ``times`` as ``path`` says (``model`` is already compiled if it says so)."""
    grad_mode = torch.inference_mode() if path.inference_mode else torch.no_grad()
    with grad_mode, torch.autocast(noise.device.type, torch.bfloat16, enabled=path.bf16):
        velocity = guided_velocity(model, labels, GUIDANCE, len(times) - 1, batched=path.batched_cfg)
        return sample_euler(velocity, noise, times)


@dataclass
class TrainingBatch:
    images: torch.Tensor  # [B, 3, 256, 256] in [-1, 1]: what online encoding reads
    latents: torch.Tensor  # their float32 latents: what the cache holds
    labels: torch.Tensor


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, autoencoder: SVGAutoencoder,
                  stats: LatentStatistics, batch: TrainingBatch, path: TrainingPath,
                  generator: torch.Generator, teacher: nn.Module | None = None) -> torch.Tensor:
    """One step of the diffusion trainer's computation (without EMA); returns the loss.

    Online encoding runs in fp32 outside autocast, like the trainer (``encode_latents``): cached and online
    latents are the same numbers. The MeanFlow paths train ``model`` (a MeanFlow DiT); a distilled one distils
    ``teacher``.
    """
    latents = batch.latents if path.cached_latents else encode_latents(autoencoder, batch.images)
    x = stats.normalize(latents)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=path.bf16):
        if path.mean_flow:
            objective = mean_flow_objective(path)
            draws = draw_mean_flow_inputs(tuple(x.shape), FLOW, objective, generator, x.device)
            loss = mean_flow_loss(model, x, batch.labels, draws, objective, teacher if path.distilled else None).loss
        else:
            draws = draw_flow_inputs(tuple(x.shape), FLOW, generator, x.device)
            loss = flow_matching_loss(model, x, batch.labels, draws.noise, draws.t, draws.drop)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
