"""How a training run is executed (batching, precision, schedule, logging, checkpoints), not what it trains.

Every trainer's config embeds one ``EngineConfig`` (YAML key ``engine``). Invariants that need the number of
processes (the global batch must split evenly over world_size x grad_accum_steps) are checked when the
engine starts, since the same config runs on 1 CPU process or on N GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..config import ConfigPath
from ..utils.checks import check_int, check_number


@dataclass
class EngineConfig:
    """Settings of the shared training loop; see docs/engine.md.

    - ``out_dir``: where checkpoints/, metrics.jsonl, metrics.csv, tensorboard/ and loss_curves.png go.
    - ``max_steps``: optimizer steps of the whole run (a resumed run continues up to it).
    - ``global_batch_size``: samples per step over all processes and micro-batches together.
    - ``grad_accum_steps``: micro-batches per step on each process (gradients accumulate between them).
    - ``precision``: "bf16" runs the forward passes under bfloat16 autocast; weights stay fp32.
    - ``seed``: data order, per-step randomness and initialization all derive from it.
    - ``log_every`` / ``checkpoint_every`` / ``sample_every``: in steps (``sample_every`` 0 means never).
    - ``keep_last_checkpoints``: older checkpoints are deleted after each save.
    - ``num_workers``: DataLoader worker processes (datasets are deterministic, so any number is safe).
    - ``grad_clip``: clip each optimizer's global gradient norm to this value (None: no clipping).
    - ``warmup_steps``: linear learning-rate warmup from 1/warmup_steps of the optimizer's lr.
    - ``lr_schedule``: "constant", or "cosine" decay to ``min_lr_ratio`` x lr at ``max_steps``.
    - ``device``: "auto" is the process's GPU (LOCAL_RANK) when CUDA is available, else the CPU.
    - ``allow_tf32``: TF32 matmuls/convolutions on CUDA for fp32 (the public SVG code's setting).
    """

    out_dir: ConfigPath
    max_steps: int
    global_batch_size: int
    grad_accum_steps: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_last_checkpoints: int = 3
    sample_every: int = 0
    num_workers: int = 2
    grad_clip: float | None = None
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_tf32: bool = True

    def __post_init__(self):
        for name in ("max_steps", "global_batch_size", "grad_accum_steps", "log_every", "checkpoint_every",
                     "keep_last_checkpoints"):
            check_int(name, getattr(self, name), at_least=1)
        for name in ("seed", "sample_every", "num_workers", "warmup_steps"):
            check_int(name, getattr(self, name), at_least=0)
        if self.global_batch_size % self.grad_accum_steps:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by grad_accum_steps {self.grad_accum_steps}"
            )
        if self.grad_clip is not None:  # null: no clipping
            check_number("grad_clip", self.grad_clip, above=0)
        check_number("min_lr_ratio", self.min_lr_ratio, at_least=0, at_most=1)

    def lr_multiplier(self, step: int) -> float:
        """The factor applied to every optimizer's base lr at ``step`` (counted from 0): warmup, then the schedule."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
