"""Two small but real trainers on a Fashion-MNIST subset, shared by the engine tests (1 process and torchrun).

- ``ClassifierTrainer``: a conv net classifying 8x8 Fashion-MNIST, with flips and input noise from the step's
  randomness, optional dropout (torch's global generator), EMA in the trainer state, and switches that make
  a step's loss NaN or send the process a Ctrl-C.
- ``GanTrainer``: an autoencoder with a hinge-loss critic and two optimizers: the generator update, then
  (from ``disc_start`` on) the critic update, each over its own micro-batch loop, the pattern of the SVG
  autoencoder trainer.
"""

from __future__ import annotations

import functools
import os
import signal

import torch
import torch.nn.functional as F
from torch import nn

from svg_diffusion.data import FashionMNIST, random_hflip
from svg_diffusion.training import EMA, Engine, EngineConfig, StepContext, Trainer, load_checkpoint

IMAGE_SIZE = 8
DATASET_SIZE = 192


@functools.cache
def fashion_subset() -> FashionMNIST:
    return FashionMNIST("test", image_size=IMAGE_SIZE, limit=DATASET_SIZE)


class ClassifierTrainer(Trainer):
    def __init__(self, device: torch.device, dropout: float = 0.0, nan_at_step: int | None = None,
                 interrupt_at_step: int | None = None):
        self.model = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(), nn.Dropout(dropout), nn.Flatten(),
            nn.Linear(8 * (IMAGE_SIZE // 2) ** 2, 10),
        ).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-3, weight_decay=0.01)
        self.ema = EMA(self.model, decay=0.9)
        self.nan_at_step = nan_at_step
        self.interrupt_at_step = interrupt_at_step
        self.sampled_at: list[int] = []

    def trainable_modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"model": self.optimizer}

    def training_step(self, batch, ctx: StepContext) -> None:
        images, labels = batch
        images = random_hflip(images, ctx.generator("flip"), ctx.global_batch_size, ctx.batch_offset)
        noise = 0.1 * ctx.randn("noise", *images.shape[1:])
        for x, y, eps in ctx.micro_batches(images, labels, noise):
            logits = ctx.modules["model"](x + eps).float()
            loss = F.cross_entropy(logits, y)
            if ctx.step == self.nan_at_step:
                loss = loss * float("nan")
            ctx.backward(loss)
            ctx.log(loss=loss, accuracy=(logits.argmax(1) == y).float().mean())
        ctx.optimizer_step(self.optimizer)
        self.ema.update(self.model)
        if ctx.step == self.interrupt_at_step:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the engine finishes this step first

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])

    def on_sample(self, ctx: StepContext) -> None:
        self.sampled_at.append(ctx.step)


class GanTrainer(Trainer):
    def __init__(self, device: torch.device, disc_start: int = 2):
        pixels = 3 * IMAGE_SIZE**2
        self.autoencoder = nn.Sequential(
            nn.Flatten(), nn.Linear(pixels, 16), nn.GELU(), nn.Linear(16, pixels), nn.Unflatten(1, (3, IMAGE_SIZE, IMAGE_SIZE))
        ).to(device)
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)).to(device)
        self.opt_g = torch.optim.Adam(self.autoencoder.parameters(), lr=2e-3, betas=(0.5, 0.9))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.9))
        self.disc_start = disc_start

    def trainable_modules(self):
        return {"autoencoder": self.autoencoder, "discriminator": self.discriminator}

    def optimizers(self):
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def training_step(self, batch, ctx: StepContext) -> None:
        images, _ = batch
        adversarial = ctx.step >= self.disc_start
        for x in ctx.micro_batches(images):
            reconstruction = ctx.modules["autoencoder"](x)
            rec_loss = (reconstruction - x).abs().mean()
            g_loss = -self.discriminator(reconstruction).mean()  # our own module: no DDP sync for the critic here
            ctx.backward(rec_loss + 0.1 * g_loss if adversarial else rec_loss, for_optimizer=self.opt_g)
            ctx.log(rec_loss=rec_loss, g_loss=g_loss)
        ctx.optimizer_step(self.opt_g)
        if not adversarial:
            return
        for x in ctx.micro_batches(images):
            with torch.no_grad():
                reconstruction = self.autoencoder(x)
            real, fake = ctx.modules["discriminator"](torch.cat([x, reconstruction])).chunk(2)
            d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            ctx.backward(d_loss, for_optimizer=self.opt_d)
            ctx.log(d_loss=d_loss)
        ctx.optimizer_step(self.opt_d)


TRAINERS = {"classifier": ClassifierTrainer, "gan": GanTrainer}


def train(out_dir, trainer: str = "classifier", resume: bool = False, trainer_options: dict | None = None, **settings):
    """Build an engine with small test settings (overridable) and a trainer, train; return (trainer, result)."""
    defaults = dict(max_steps=8, global_batch_size=16, log_every=1, checkpoint_every=4, num_workers=0, device="cpu")
    engine = Engine(EngineConfig(out_dir=str(out_dir), **{**defaults, **settings}))
    model = TRAINERS[trainer](engine.device, **(trainer_options or {}))
    return model, engine.fit(model, fashion_subset(), resume=resume)


def final_state(result) -> dict:
    """The checkpoint a run ended with."""
    return load_checkpoint(result.checkpoint)
