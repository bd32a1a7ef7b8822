"""The one training loop shared by every trainer: data, devices, steps, logging, hooks, checkpoints, resume.

    engine = Engine(config)                          # joins torchrun's process group if launched by it
    trainer = MyTrainer(..., device=engine.device)   # see trainer.py for the protocol
    result = engine.fit(trainer, dataset, resume=True)

Per step: this rank's slice of the global batch (``StepSampler`` -> ``DataLoader``) is moved to the device,
torch's global generator is reseeded from (seed, step, rank), the trainer's ``training_step`` runs, and all
ranks agree on two flags in one all-reduce: was a loss NaN/inf anywhere (stop with an SVGError naming the
step and the last good checkpoint, saving nothing) and was the run interrupted (Ctrl-C or SIGTERM: finish
the step, save a checkpoint, raise KeyboardInterrupt). Then hooks, logging and checkpoints as configured.

Progress: a tqdm bar on a terminal. When stdout is not a terminal (nohup, SLURM, CI logs), where tqdm
switches itself off, rank 0 prints one plain, flushed line per log record instead (:func:`progress_line`).

Exact resume: a checkpoint holds the trainable modules, the optimizers, the trainer's extra state, the step
and the config. Nothing else is needed, because the data order and every random draw are pure functions of
(seed, step): a run interrupted and resumed on the CPU ends with bit-identical weights.
"""

from __future__ import annotations

import datetime
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import to_dict
from ..errors import SVGError
from .checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from .config import EngineConfig
from .context import StepContext
from .distributed import all_reduce_, barrier, broadcast_int, setup_distributed, unwrap, wrap_ddp
from .metrics import MetricsLogger, plot_loss_curves
from .randomness import derive_seed
from .sharding import StepSampler
from .trainer import Trainer

CHECKPOINT_FORMAT = "svg-diffusion/engine-checkpoint/1"


@dataclass
class FitResult:
    """What ``Engine.fit`` leaves: steps done, the last checkpoint written (or resumed from), the log records."""

    steps: int
    checkpoint: Path | None
    records: list[dict] = field(default_factory=list)


class Engine:
    """Runs trainers: ``Engine(config).fit(trainer, dataset, resume=False)``.

    Creating the engine sets up the process (device, process group under torchrun, TF32) and seeds torch
    from ``config.seed`` identically on every rank, so modules built next start identical.
    """

    def __init__(self, config: EngineConfig):
        self.config = config
        self.place = setup_distributed(config.device)
        per_step = self.place.world_size * config.grad_accum_steps
        if config.global_batch_size % per_step:
            raise SVGError(
                f"global_batch_size {config.global_batch_size} is not divisible by world_size {self.place.world_size} "
                f"x grad_accum_steps {config.grad_accum_steps} = {per_step}"
            )
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high" if config.allow_tf32 else "highest")
            torch.backends.cudnn.allow_tf32 = config.allow_tf32
        torch.manual_seed(derive_seed(config.seed, "init"))

    @property
    def device(self) -> torch.device:
        return self.place.device

    @property
    def rank(self) -> int:
        return self.place.rank

    @property
    def world_size(self) -> int:
        return self.place.world_size

    @property
    def is_main(self) -> bool:
        return self.place.is_main

    def print(self, message: str) -> None:
        """A message from rank 0 that does not break the progress bar."""
        if self.is_main:
            tqdm.write(message)

    def fit(self, trainer: Trainer, dataset: Dataset, resume: bool = False) -> FitResult:
        """Train ``trainer`` on ``dataset`` up to ``config.max_steps``.

        ``resume=True`` continues from the latest checkpoint in ``out_dir`` (or starts fresh when there is
        none); without it, an ``out_dir`` that already has checkpoints is an error, never overwritten.
        """
        config = self.config
        modules, optimizers = trainer.trainable_modules(), trainer.optimizers()
        self._check_trainer(trainer, modules, optimizers)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])  # the schedule scales this base value
        start, last_checkpoint = self._restore(trainer, modules, optimizers, resume)
        records = MetricsLogger(config.out_dir, start, enabled=self.is_main)
        if start >= config.max_steps:
            records.close()
            return FitResult(start, last_checkpoint, records.records)

        ctx = StepContext(config, self.place, {name: wrap_ddp(m, self.place) for name, m in modules.items()}, optimizers)
        sampler = StepSampler(len(dataset), config.global_batch_size, config.seed, self.rank, self.world_size)
        loader = DataLoader(
            dataset, batch_sampler=sampler.iter_from(start), num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        batches = iter(loader)
        progress = tqdm(total=config.max_steps, initial=start, desc="train", dynamic_ncols=True,
                        disable=None if self.is_main else True)
        plain_lines = self.is_main and not sys.stdout.isatty()  # a log file gets lines instead of the bar
        window_start, window_steps = time.perf_counter(), 0
        try:
            with _deferred_interrupts() as interrupt:
                for step in range(start, config.max_steps):
                    batch = _to_device(next(batches), self.device)
                    for module in modules.values():
                        module.train()
                    for optimizer in optimizers.values():
                        optimizer.zero_grad(set_to_none=True)
                    torch.manual_seed(derive_seed(config.seed, step, "global", self.rank))
                    ctx.begin_step(step)
                    trainer.training_step(batch, ctx)

                    flags = torch.stack([ctx.loss_was_nonfinite, torch.tensor(interrupt.is_set(), device=self.device)])
                    nonfinite, interrupted = all_reduce_(flags.to(torch.int32), "max").tolist()
                    if nonfinite:
                        raise SVGError(_nonfinite_message(step, last_checkpoint))

                    done = ctx.step = step + 1
                    window_steps += 1
                    progress.update(1)
                    last = done == config.max_steps
                    save = done % config.checkpoint_every == 0 or last or interrupted
                    if config.sample_every and (done % config.sample_every == 0 or last):
                        trainer.on_sample(ctx)
                    if done % config.log_every == 0 or save:
                        record = {"step": done, "epoch": round(sampler.epoch(done), 4), **ctx.metrics.pop_means()}
                        record.update({f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in optimizers.items()})
                        record["steps_per_sec"] = window_steps / (time.perf_counter() - window_start)
                        window_start, window_steps = time.perf_counter(), 0
                        records.write(record)
                        if plain_lines:
                            print(progress_line(record, config.max_steps, config.global_batch_size), flush=True)
                        progress.set_postfix({k: f"{v:.4g}" for k, v in record.items() if "loss" in k}, refresh=False)
                    if save:
                        last_checkpoint = self._save(trainer, modules, optimizers, done)
                    if interrupted and not last:
                        self.print(f"interrupted: saved {last_checkpoint} after {done} steps; fit(..., resume=True) continues")
                        raise KeyboardInterrupt
        finally:
            progress.close()
            records.close()
            del batches  # stops DataLoader workers
        if self.is_main:
            plot_loss_curves(records.records, Path(config.out_dir) / "loss_curves.png")
        return FitResult(config.max_steps, last_checkpoint, records.records)

    def _check_trainer(self, trainer: Trainer, modules: dict[str, nn.Module],
                       optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Catch trainer mistakes that would otherwise fail late, differently on 1 and N processes."""
        who = type(trainer).__name__
        if not modules or not optimizers:
            raise ValueError(f"{who} must declare at least one trainable module and one optimizer")
        trained = set()
        for name, module in modules.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                raise ValueError(f"{who}: trainable module {name!r} has no parameter with requires_grad")
            if any(p.device != self.device for p in params):
                raise ValueError(f"{who}: module {name!r} is not on the engine's device {self.device}; build it on engine.device")
            trained.update(id(p) for p in params)
        for name, optimizer in optimizers.items():
            if any(id(p) not in trained for group in optimizer.param_groups for p in group["params"]):
                raise ValueError(f"{who}: optimizer {name!r} updates parameters outside the trainable modules")

    def _restore(self, trainer: Trainer, modules: dict[str, nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], resume: bool) -> tuple[int, Path | None]:
        """Load the latest checkpoint when resuming; return (steps done, its path)."""
        out_dir = self.config.out_dir
        saved = list_checkpoints(out_dir) if self.is_main else []
        step = broadcast_int(saved[-1][0] if saved else -1)  # rank 0 decides, so all ranks load the same file
        if step < 0:
            return 0, None
        path = checkpoint_path(out_dir, step)
        if not resume:
            raise SVGError(f"{out_dir} already holds checkpoints (latest {path.name}): resume, or choose a new out_dir")
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise SVGError(f"{path} is not a training checkpoint of this engine (format {state.get('format')!r})")
        for kind, ours in (("modules", modules), ("optimizers", optimizers)):
            if set(state[kind]) != set(ours):
                raise SVGError(f"{path} holds {kind} {sorted(state[kind])}, the trainer has {sorted(ours)}")
        try:
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
            for name, optimizer in optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
        except (RuntimeError, ValueError, KeyError) as err:
            raise SVGError(f"{path} does not fit the trainer: {str(err).strip().splitlines()[0]}") from None
        trainer.load_state_dict(state["trainer"])
        changed = [f"{key} {state['config'].get(key)!r} -> {value!r}"
                   for key, value in to_dict(self.config).items() if state["config"].get(key) != value]
        if changed:
            self.print("resuming with changed settings: " + ", ".join(changed))
        self.print(f"resumed from {path} after {state['step']} steps")
        return int(state["step"]), path

    def _save(self, trainer: Trainer, modules: dict[str, nn.Module],
              optimizers: dict[str, torch.optim.Optimizer], step: int) -> Path:
        """Rank 0 writes the checkpoint after ``step`` steps and prunes old ones; every rank waits for it."""
        path = checkpoint_path(self.config.out_dir, step)
        if self.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "config": to_dict(self.config),
                "modules": {name: unwrap(m).state_dict() for name, m in modules.items()},
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "trainer": trainer.state_dict(),
            }
            save_checkpoint(state, path)
            prune_checkpoints(self.config.out_dir, self.config.keep_last_checkpoints)
        barrier()  # no rank exits (e.g. after an interrupt) while rank 0 is still writing
        return path


def progress_line(record: dict, max_steps: int, global_batch_size: int) -> str:
    """A metrics record as one plain line: step/total, losses, learning rates, images/s and the ETA at the
    rate measured since the previous record, e.g.
    ``step 200/1000  loss 0.4123  lr/model 0.0001  512.0 img/s  ETA 0:00:25``."""
    rate = record["steps_per_sec"]
    remaining = datetime.timedelta(seconds=round((max_steps - record["step"]) / rate))
    parts = [f"step {record['step']}/{max_steps}"]
    parts += [f"{name} {value:.4g}" for name, value in record.items() if "loss" in name]
    parts += [f"{name} {value:.4g}" for name, value in record.items() if name.startswith("lr/")]
    parts += [f"{rate * global_batch_size:.1f} img/s", f"ETA {remaining}"]
    return "  ".join(parts)


def _nonfinite_message(step: int, last_checkpoint: Path | None) -> str:
    where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
    return (f"training stopped: the loss is NaN or infinite in step {step + 1}; nothing was saved, {where} "
            "(lower the learning rate or set grad_clip, then resume)")


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested list/tuple/dict) batch on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(item, device) for key, item in batch.items()}
    return batch


@contextmanager
def _deferred_interrupts() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C / SIGTERM into a flag the loop checks between steps (a second one acts at once).

    Stopping mid-step could leave a GAN's generator updated and its discriminator not; the loop instead
    finishes the step, saves, and raises KeyboardInterrupt. Signal handlers exist only in the main thread.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum, frame):
        requested.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        tqdm.write("stopping after this step and saving a checkpoint (interrupt again to stop at once)")

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
