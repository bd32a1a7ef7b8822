"""The ``StepContext`` a trainer's ``training_step`` receives: its place in the run and the engine's helpers.

The engine owns everything that is the same for every trainer; the context is how a trainer reaches it:

- ``micro_batches(*tensors)``: split this rank's batch for gradient accumulation. Every micro-batch but the
  last runs under DDP ``no_sync`` (gradients accumulate locally, one all-reduce per step), and each runs
  under the configured autocast.
- ``backward(loss, for_optimizer=None)``: backpropagate one micro-batch's mean loss (scaled by
  1/grad_accum_steps so the step's gradient is the global-batch mean), recording whether it was finite.
- ``optimizer_step(optimizer)``: learning-rate warmup/schedule, optional gradient clipping, the update, and
  zeroing that optimizer's gradients.
- ``rand`` / ``randn`` / ``generator``: the step's randomness, drawn for the GLOBAL batch from
  (seed, step, stream) and sliced to this rank (``local_rows``), so world size does not change results.
- ``log(**scalars)``: metrics, averaged over micro-batches, steps and ranks at each log step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import EngineConfig
from .distributed import Distributed, all_reduce_
from .metrics import RunningMeans
from .randomness import step_generator


class StepContext:
    """What a trainer sees during ``training_step`` (and hooks). Built by the engine, one per run.

    Attributes: ``step`` (optimizer steps completed so far: the step being computed in ``training_step``,
    counted from 0; the steps done, in hooks), ``config``, ``rank``, ``world_size``, ``is_main``, ``device``,
    ``out_dir``, ``global_batch_size``, ``local_batch_size`` (this rank's rows per step), ``batch_offset``
    (this rank's first row in the global batch), ``modules`` (the trainer's trainable modules by name,
    wrapped in DDP when there are several processes: call these in the loss whose gradients train them).
    """

    def __init__(self, config: EngineConfig, place: Distributed, modules: dict[str, nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer]):
        self.config = config
        self.rank = place.rank
        self.world_size = place.world_size
        self.is_main = place.is_main
        self.device = place.device
        self.out_dir = Path(config.out_dir)
        self.global_batch_size = config.global_batch_size
        self.local_batch_size = config.global_batch_size // place.world_size
        self.batch_offset = place.rank * self.local_batch_size
        self.modules = modules
        self.step = 0
        self.metrics = RunningMeans(place.device)
        self._optimizer_names = {id(opt): name for name, opt in optimizers.items()}
        self._in_micro_batch = False
        self._micro_loop_open = False
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=place.device)

    # -- randomness ------------------------------------------------------------------------------------------

    def generator(self, stream: str) -> torch.Generator:
        """This step's generator for ``stream`` on the device, identical on every rank: draw for the global batch."""
        return step_generator(self.config.seed, self.step, stream, self.device)

    def local_rows(self, global_tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor drawn for the global batch."""
        return global_tensor[self.batch_offset : self.batch_offset + self.local_batch_size]

    def rand(self, stream: str, *sample_shape: int) -> torch.Tensor:
        """U[0, 1) values [local_batch_size, *sample_shape]: this rank's rows of the step's global draw."""
        shape = (self.global_batch_size, *sample_shape)
        return self.local_rows(torch.rand(shape, generator=self.generator(stream), device=self.device))

    def randn(self, stream: str, *sample_shape: int) -> torch.Tensor:
        """N(0, 1) values [local_batch_size, *sample_shape]: this rank's rows of the step's global draw."""
        shape = (self.global_batch_size, *sample_shape)
        return self.local_rows(torch.randn(shape, generator=self.generator(stream), device=self.device))

    # -- gradients -------------------------------------------------------------------------------------------

    def autocast(self):
        """The configured autocast (bf16 or none) for forward passes outside ``micro_batches`` (e.g. sampling)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def micro_batches(self, *tensors: torch.Tensor) -> Iterator[Any]:
        """Yield ``grad_accum_steps`` equal chunks of this rank's batch (a tuple, or the tensor when given one).

        Every tensor's first dimension must be ``local_batch_size``. Run the loop to its end before
        ``optimizer_step``; a step may run several loops (e.g. generator, then discriminator).
        """
        for tensor in tensors:
            if tensor.shape[0] != self.local_batch_size:
                raise ValueError(
                    f"micro_batches: a tensor has {tensor.shape[0]} rows, this rank's batch has {self.local_batch_size}"
                )
        count = self.config.grad_accum_steps
        chunks = [tensor.chunk(count) for tensor in tensors]
        self._micro_loop_open = True
        for i in range(count):
            with ExitStack() as stack:
                if i < count - 1:  # accumulate locally; the last micro-batch's backward all-reduces the sum
                    for module in self.modules.values():
                        if isinstance(module, DistributedDataParallel):
                            stack.enter_context(module.no_sync())
                stack.enter_context(self.autocast())
                self._in_micro_batch = True
                try:
                    yield chunks[0][i] if len(tensors) == 1 else tuple(c[i] for c in chunks)
                finally:
                    self._in_micro_batch = False
        self._micro_loop_open = False

    def backward(self, loss: torch.Tensor, for_optimizer: torch.optim.Optimizer | None = None) -> None:
        """Backpropagate a micro-batch's mean loss; gradients accumulate until ``optimizer_step``.

        ``for_optimizer``: accumulate gradients only into that optimizer's parameters (a GAN's generator
        loss must not leave gradients in the discriminator). Call it inside ``micro_batches``.
        """
        if not self._in_micro_batch:
            raise RuntimeError("ctx.backward(loss) must be called inside `for ... in ctx.micro_batches(...)`")
        self._nonfinite |= ~torch.isfinite(loss.detach()).all()
        inputs = None
        if for_optimizer is not None:
            inputs = [p for group in for_optimizer.param_groups for p in group["params"] if p.requires_grad]
        with torch.autocast(self.device.type, enabled=False):
            (loss / self.config.grad_accum_steps).backward(inputs=inputs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply ``optimizer`` to the accumulated gradients (lr schedule, clipping), then zero them."""
        if self._micro_loop_open or self._in_micro_batch:
            raise RuntimeError("ctx.optimizer_step: run the `ctx.micro_batches(...)` loop to its end first")
        name = self._optimizer_names.get(id(optimizer))
        if name is None:
            raise ValueError("ctx.optimizer_step: this optimizer is not one of the trainer's optimizers()")
        multiplier = self.config.lr_multiplier(self.step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
        if self.config.grad_clip is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self.log(**{f"grad_norm/{name}": torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # -- metrics and statistics ------------------------------------------------------------------------------

    def log(self, **scalars: float | torch.Tensor) -> None:
        """Record scalars (e.g. ``ctx.log(loss=loss)``); every rank must record the same names at the same steps."""
        for name, value in scalars.items():
            self.metrics.add(name, value)

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (in place), e.g. for statistics that must match a single process."""
        return all_reduce_(tensor, "mean")

    # -- engine side -----------------------------------------------------------------------------------------

    def begin_step(self, step: int) -> None:
        """Called by the engine before ``training_step``."""
        self.step = step
        self._nonfinite.zero_()
        self._micro_loop_open = False

    @property
    def loss_was_nonfinite(self) -> torch.Tensor:
        """Whether a loss passed to ``backward`` this step was NaN or infinite (a device tensor, not synced)."""
        return self._nonfinite
