"""The one training engine shared by the trainers (SSL encoder pretraining, autoencoder, diffusion).

A trainer (``Trainer``) says what is optimized; ``Engine(config).fit(trainer, dataset)`` runs the loop:
distributed data parallelism under torchrun, bf16 autocast, gradient accumulation, per-step randomness,
atomic checkpoints with exact resume, metrics, progress and hooks. See docs/engine.md.
"""

from .checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import EngineConfig
from .context import StepContext
from .distributed import Distributed, all_gather_rows, all_reduce_, setup_distributed, unwrap
from .ema import EMA
from .engine import Engine, FitResult
from .metrics import plot_loss_curves, read_records
from .randomness import derive_seed, step_generator
from .trainer import Trainer

__all__ = [
    "EMA",
    "Distributed",
    "Engine",
    "EngineConfig",
    "FitResult",
    "StepContext",
    "Trainer",
    "all_gather_rows",
    "all_reduce_",
    "checkpoint_path",
    "derive_seed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "plot_loss_curves",
    "read_records",
    "save_checkpoint",
    "setup_distributed",
    "step_generator",
    "unwrap",
]
