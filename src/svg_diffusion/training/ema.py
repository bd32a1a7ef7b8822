"""Exponential moving average of a module's weights, kept in fp32 beside the trained module.

After each optimizer step, ``shadow = decay * shadow + (1 - decay) * weights`` for every floating-point entry
of the module's state_dict (parameters and buffers alike; frozen entries stay exactly constant); integer
buffers are copied. The shadow is fp32 whatever the module's dtype, so small updates (1 - decay = 1e-4)
are not rounded away in bf16.

With ``warmup=True`` the n-th update uses ``min(decay, (1 + n) / (10 + n))`` (the cap diffusers' EMAModel
applies): otherwise a short run's average is still mostly the initialization (0.999^1000 = 37%), and a
zero-initialized output layer makes that a model that barely moves the noise.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SVGError
from ..utils.checks import check_number
from .distributed import unwrap


class EMA:
    """``EMA(module, decay)``: ``update(module)`` after each optimizer step, ``copy_to(module)`` to use the average.

    ``shadow`` is a state_dict of the module (fp32 for floating entries), so ``module.load_state_dict(ema.shadow)``
    also works. ``state_dict()`` / ``load_state_dict()`` make it part of a checkpoint.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = False):
        self.decay = check_number("EMA decay", decay, at_least=0, below=1)
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {
            name: value.detach().clone().float() if value.is_floating_point() else value.detach().clone()
            for name, value in unwrap(module).state_dict().items()
        }

    def current_decay(self) -> float:
        """The decay the next ``update`` applies."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average toward ``module``'s current weights (a DDP wrapper is looked through)."""
        decay = self.current_decay()
        for name, value in unwrap(module).state_dict().items():
            average = self.shadow[name]
            if average.is_floating_point():
                average.lerp_(value.float(), 1.0 - decay)
            else:
                average.copy_(value)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into ``module`` (cast to its dtypes)."""
        unwrap(module).load_state_dict(self.shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(state["shadow"]))
            unexpected = sorted(set(state["shadow"]) - set(self.shadow))
            raise SVGError(f"EMA state does not match the module: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
