"""Latent diffusion: the transformer (DiT/SiT), the flow-matching objective and the samplers.

Reading order: :mod:`.transformer` (the velocity model), :mod:`.flow` (path, time shift, loss),
:mod:`.solvers` (ODE/SDE integrators over a time grid), :mod:`.guidance` (classifier-free guidance),
:mod:`.mean_flow` (the MeanFlow objective and the model's average velocity; its sampler is in :mod:`.solvers`),
:mod:`.latents` (latent statistics and the latent cache). The trainer is ``svg_diffusion.trainers.diffusion``.
"""

from .flow import (
    FlowInputs,
    FlowMatchingConfig,
    draw_flow_inputs,
    flow_matching_loss,
    interpolate,
    sample_training_time,
    shift_from_public,
    shift_time,
    shift_to_public,
)
from .guidance import GuidanceConfig, combine_guidance, guided_velocity
from .latents import (
    LatentCacheDataset,
    LatentMoments,
    LatentStatistics,
    autoencoder_fingerprint,
    cache_latents,
    compute_latent_statistics,
    encode_latents,
)
from .mean_flow import (
    MeanFlowConfig,
    MeanFlowInputs,
    MeanFlowLoss,
    draw_mean_flow_inputs,
    guided_average_velocity,
    mean_flow_loss,
)
from .solvers import (
    AVERAGE_VELOCITY_SAMPLERS,
    SAMPLERS,
    get_sampler,
    mean_flow_sample,
    sample_adams_bashforth,
    sample_dpm_solver_2m,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
    time_grid,
)
from .transformer import DIT_SIZES, DiT, DiTConfig, compile_for_sampling, warm_start_mean_flow

__all__ = [
    "DIT_SIZES", "DiT", "DiTConfig", "compile_for_sampling", "warm_start_mean_flow",
    "FlowInputs", "FlowMatchingConfig", "draw_flow_inputs", "flow_matching_loss", "interpolate",
    "sample_training_time", "shift_from_public", "shift_time", "shift_to_public",
    "GuidanceConfig", "combine_guidance", "guided_velocity",
    "MeanFlowConfig", "MeanFlowInputs", "MeanFlowLoss", "draw_mean_flow_inputs", "guided_average_velocity",
    "mean_flow_loss", "mean_flow_sample",
    "LatentCacheDataset", "LatentMoments", "LatentStatistics", "autoencoder_fingerprint", "cache_latents",
    "compute_latent_statistics", "encode_latents",
    "AVERAGE_VELOCITY_SAMPLERS", "SAMPLERS", "get_sampler", "sample_adams_bashforth", "sample_dpm_solver_2m",
    "sample_euler", "sample_euler_maruyama", "sample_heun", "time_grid",
]
