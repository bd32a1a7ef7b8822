"""The trainer protocol: a small class that says what is optimized; the engine runs everything else.

A trainer builds its modules on ``engine.device`` (after ``Engine(config)``, which seeds initialization the
same way on every rank) and implements three methods; the others are optional:

    class MyTrainer(Trainer):
        def trainable_modules(self):  return {"model": self.model}
        def optimizers(self):         return {"model": self.optimizer}
        def training_step(self, batch, ctx):
            images, labels = batch                                  # this rank's rows of the global batch
            noise = ctx.randn("noise", *images.shape[1:])            # drawn for the global batch, sliced
            for x, y, eps in ctx.micro_batches(images, labels, noise):
                loss = self.loss(ctx.modules["model"], x, y, eps)    # through the (DDP) wrapper
                ctx.backward(loss)
                ctx.log(loss=loss)
            ctx.optimizer_step(self.optimizer)
            self.ema.update(self.model)
        def state_dict(self):              return {"ema": self.ema.state_dict()}
        def load_state_dict(self, state):  self.ema.load_state_dict(state["ema"])
        def on_sample(self, ctx):          ...  # every sample_every steps and at the end, on every rank

Rules that keep 1 process and N processes equivalent and resumes exact:
- Randomness comes from ``ctx`` (``rand``, ``randn``, ``generator``); torch's global generator (dropout) is
  reseeded every step from (seed, step, rank) by the engine.
- Call ``ctx.modules[name]`` (the DDP wrapper) in the loss that trains that module, and only its
  ``forward``; elsewhere (e.g. the discriminator inside a generator loss, sampling) call your own module.
- Everything else that changes during training and is not in a trainable module or optimizer (EMA,
  teacher, statistics) goes in ``state_dict`` as tensors and plain containers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from ..errors import SVGError
from .context import StepContext


class Trainer(ABC):
    """Base class of the three trainers (SSL encoder, autoencoder, diffusion); see the module docstring."""

    @abstractmethod
    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules whose parameters are optimized, by name: DDP-wrapped, saved in checkpoints."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by name (over parameters of ``trainable_modules`` only); saved in checkpoints."""

    @abstractmethod
    def training_step(self, batch: Any, ctx: StepContext) -> None:
        """One optimizer step on this rank's batch: ``micro_batches`` / ``backward`` / ``optimizer_step`` / ``log``."""

    def state_dict(self) -> dict:
        """Other state an exact resume needs (EMA, teacher, statistics): tensors and plain containers only.

        Called on rank 0 alone when a checkpoint is written, so it must not communicate with other ranks.
        """
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        if state:
            raise SVGError(f"the checkpoint has trainer state {sorted(state)} that {type(self).__name__} does not load")

    def on_sample(self, ctx: StepContext) -> None:
        """Called on every rank after every ``sample_every`` steps and after the last step (write grids, evaluate)."""
