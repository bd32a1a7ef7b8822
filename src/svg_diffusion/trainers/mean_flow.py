"""The MeanFlow objective in the diffusion trainer: the ``mean_flow`` config section and what it changes.

A run whose config has a ``mean_flow`` section trains the DiT to predict average velocities
(``diffusion/mean_flow.py``, docs/diffusion.md "MeanFlow") instead of flow matching; everything else about
the run (data, latents, engine, EMA, checkpoints, resumes) is the flow-matching run's. It changes:

- the transformer: built with ``interval_input``, and ``guidance_input`` when ``guidance_range`` is set
  (:func:`mean_flow_transformer`);
- the step: noise, (t, r), label drops and guidance scales drawn for the GLOBAL batch from the step's
  ``flow`` generator, this rank's rows, the MeanFlow loss (logged as ``loss``, the unweighted error as
  ``mse``) against ``x - eps`` or, with ``distill``, a frozen teacher's velocity (:func:`mean_flow_step`);
- the sampling defaults of the final pipeline and the preview grid: the ``mean_flow`` sampler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..diffusion.flow import FlowMatchingConfig
from ..diffusion.guidance import GuidanceConfig
from ..diffusion.mean_flow import MeanFlowConfig, MeanFlowInputs, draw_mean_flow_inputs, mean_flow_loss
from ..diffusion.transformer import DiT, DiTConfig
from ..pipeline import SamplingDefaults
from ..training import StepContext

SAMPLER = "mean_flow"
# Steps of a MeanFlow pipeline by default: on the 2-D benchmark (docs/diffusion.md, "Which form we ship") a
# second step roughly halved the distance to the exact guided endpoint of every arm, for one more forward.
DEFAULT_STEPS = 2
DEFAULT_GUIDANCE = 1.5  # the flow-matching pipelines' default scale (the paper's FID setting)


@dataclass
class MeanFlowTrainConfig(MeanFlowConfig):
    """The ``mean_flow`` section: the objective's options (:class:`MeanFlowConfig`) and ``distill``.

    ``distill``: the transformer of ``init_from`` (frozen) gives the target velocity instead of x - eps
    (MF-RAE), guided with its own unconditional branch when the objective guides, and the grid rows' steps
    with ``grid_teacher_steps``.
    """

    distill: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grid_teacher_steps and not self.distill:
            raise ValueError("grid_teacher_steps follows the teacher's flow: set distill (the teacher is init_from's)")


def mean_flow_transformer(config: DiTConfig, mean_flow: MeanFlowConfig) -> DiTConfig:
    """The run's DiT config with the inputs the objective needs: r, and w when drawn per sample."""
    return dataclasses.replace(config, interval_input=True, guidance_input=mean_flow.guidance_range is not None)


def sampling_guidance(mean_flow: MeanFlowConfig, scale: float) -> float:
    """The guidance scale a MeanFlow model of this objective draws with when ``scale`` is asked for: ``scale``
    inside the trained range with a guidance input; 1 without one (its guidance was fixed in training)."""
    if mean_flow.guidance_range is None:
        return 1.0
    lo, hi = mean_flow.guidance_range
    return min(max(scale, lo), hi)


def mean_flow_sampling(mean_flow: MeanFlowConfig) -> SamplingDefaults:
    """The sampling defaults of a MeanFlow run's pipeline when the config sets none."""
    return SamplingDefaults(num_steps=DEFAULT_STEPS, sampler=SAMPLER,
                            guidance=GuidanceConfig(scale=sampling_guidance(mean_flow, DEFAULT_GUIDANCE)))


def mean_flow_step(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, flow: FlowMatchingConfig,
                   mean_flow: MeanFlowConfig, teacher: DiT | None) -> None:
    """Backpropagate the MeanFlow loss of this rank's latents ``x`` and labels ``y``, micro-batch by micro-batch."""
    drawn = draw_mean_flow_inputs((ctx.global_batch_size, *x.shape[1:]), flow, mean_flow, ctx.generator("flow"),
                                  ctx.device)
    mine = drawn.rows(ctx.batch_offset, ctx.batch_offset + ctx.local_batch_size)
    for x_i, y_i, *rows in ctx.micro_batches(x, y, *mine.tensors()):
        result = mean_flow_loss(ctx.modules["transformer"], x_i, y_i, MeanFlowInputs(*rows), mean_flow, teacher)
        ctx.backward(result.loss)
        ctx.log(loss=result.loss, mse=result.mse)
