"""Training the SVG autoencoder: ``svg-diffusion train-autoencoder --config FILE`` / ``train_autoencoder(config)``.

Per step (SPEC §1), on the engine of ``svg_diffusion.training``:

1. generator update: the batch (flipped when ``data.hflip``) goes through the autoencoder with the residual
   maps of ``model.mask_prob`` of the samples replaced by the mask token; loss = L1 + LPIPS, plus from
   ``loss.disc_start`` on the hinge generator loss with the adaptive weight; Adam over the residual encoder
   and the decoder only. With ``model.kind: vae`` (the VAE baseline, ``vae.py``) the batch goes through a
   posterior sample instead (noise from the step's ``posterior`` generator), the loss adds
   ``model.kl_weight`` x KL, and Adam trains the conv encoder and the decoder;
2. discriminator update (from ``loss.disc_start`` on): hinge loss on the batch and the reconstructions of
   step 1, Adam over the PatchGAN.

The frozen encoder and LPIPS are never optimized. What DDP wraps and checkpoints hold is the trained part
(``TrainedParts``: residual encoder, alignment statistics, decoder), not the frozen encoder. At the end
``out_dir/autoencoder`` holds the model as ``SVGAutoencoder.save_pretrained`` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..autoencoder.losses import AutoencoderLoss, LossConfig
from ..autoencoder.model import AutoencoderConfig
from ..autoencoder.vae import Autoencoder, VAEConfig, build_autoencoder
from ..config import ConfigError, from_dict, save_config
from ..data import DataConfig, build_dataset, random_hflip
from ..evaluation.image_metrics import psnr
from ..training import Engine, EngineConfig, StepContext, Trainer
from ..training.distributed import barrier
from ..utils.images import save_image_grid

MODEL_FOLDER = "autoencoder"
SAMPLES_FOLDER = "samples"


@dataclass
class OptimizerConfig:
    """Adam for both players, the paper's recipe: lr 1e-4, betas (0.5, 0.9)."""

    lr: float = 1e-4
    disc_lr: float | None = None  # None: the same as lr
    betas: tuple[float, float] = (0.5, 0.9)

    def __post_init__(self):
        if self.lr <= 0 or (self.disc_lr is not None and self.disc_lr <= 0):
            raise ValueError(f"learning rates must be positive, got lr {self.lr} and disc_lr {self.disc_lr}")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {list(self.betas)}")


@dataclass
class AutoencoderTrainConfig:
    """The ``train-autoencoder`` config file: how to run (engine), on what (data), what (model, loss, optimizer).

    ``model``: an :class:`AutoencoderConfig` (SVG), or with ``kind: vae`` a :class:`VAEConfig` (the VAE
    baseline). ``preview_images``: test images whose reconstructions are drawn (and whose PSNR is logged as
    ``preview_psnr``) every ``engine.sample_every`` steps and at the end.
    """

    engine: EngineConfig
    data: DataConfig
    model: Any = field(default_factory=AutoencoderConfig)  # AutoencoderConfig | VAEConfig, see __post_init__
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    preview_images: int = 16

    def __post_init__(self):
        if isinstance(self.model, dict):  # from a file: ``kind`` picks the class first, so errors name the right key
            if self.model.get("kind", "vae") != "vae":
                raise ConfigError(f"model.kind: expected 'vae' (or no kind: the SVG autoencoder), got {self.model['kind']!r}")
            self.model = from_dict(VAEConfig if "kind" in self.model else AutoencoderConfig, self.model, where="model")
        if not isinstance(self.model, (AutoencoderConfig, VAEConfig)):
            raise ConfigError(f"model: expected a mapping, got {self.model!r}")
        if self.data.image_size != self.model.image_size:
            raise ValueError(f"data.image_size {self.data.image_size} differs from model.image_size {self.model.image_size}")
        if self.preview_images < 1:
            raise ValueError(f"preview_images must be at least 1, got {self.preview_images}")


class TrainedParts(nn.Module):
    """The autoencoder's trained submodules (residual encoder, alignment, decoder; a VAE's all) as one module.

    Its parameters and state dict are those of the trained parts only (the keys of ``model.safetensors``),
    so DDP synchronizes and checkpoints store nothing of the frozen encoder; its forward is the whole
    autoencoder's, which uses these very submodules.
    """

    def __init__(self, autoencoder: Autoencoder):
        super().__init__()
        for name, module in autoencoder._trained_modules().items():
            self.add_module(name, module)
        object.__setattr__(self, "autoencoder", autoencoder)  # not a submodule: keeps the frozen encoder out

    def forward(self, images: torch.Tensor, extra: torch.Tensor | None = None):
        """The autoencoder's forward: ``extra`` is the residual mask (SVG) or the posterior noise (VAE)."""
        return self.autoencoder(images, extra)


class AutoencoderTrainer(Trainer):
    """Generator (residual encoder + decoder) and PatchGAN updates of the SVG autoencoder; see the module docstring."""

    def __init__(self, config: AutoencoderTrainConfig, device: torch.device, preview: torch.Tensor):
        self.config = config
        self.autoencoder = build_autoencoder(config.model).to(device)
        self.is_vae = isinstance(config.model, VAEConfig)
        self.trained = TrainedParts(self.autoencoder)
        self.criterion = AutoencoderLoss(config.loss).to(device)  # frozen LPIPS + the discriminator
        opt = config.optimizer
        self.opt_g = torch.optim.Adam(self.trained.parameters(), lr=opt.lr, betas=opt.betas)
        self.opt_d = torch.optim.Adam(self.criterion.discriminator.parameters(), lr=opt.disc_lr or opt.lr,
                                      betas=opt.betas)
        self.preview = preview.to(device)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.trained, "discriminator": self.criterion.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"autoencoder": self.opt_g, "discriminator": self.opt_d}

    def training_step(self, batch, ctx: StepContext) -> None:
        images, _ = batch
        if self.config.data.hflip:
            images = random_hflip(images, ctx.generator("hflip"), ctx.global_batch_size, ctx.batch_offset)
        if self.is_vae:  # posterior noise, drawn for the global batch like the SVG mask
            model = self.autoencoder
            extra = ctx.randn("posterior", model.latent_channels, model.latent_size, model.latent_size)
        else:
            extra = ctx.local_rows(self.autoencoder.draw_residual_mask(ctx.global_batch_size, ctx.generator("residual_mask")))
        adversarial = self.criterion.gan_active(ctx.step)

        reconstructions = []
        for x, e in ctx.micro_batches(images, extra):
            out = ctx.modules["autoencoder"](x, e)
            recon = out.recon
            loss, parts = self.criterion.generator_loss(x, recon, self.autoencoder.decoder.last_layer, adversarial)
            if self.is_vae:
                loss = loss + self.config.model.kl_weight * out.kl
                ctx.log(kl_loss=out.kl)
            ctx.backward(loss, for_optimizer=self.opt_g)
            ctx.log(loss=loss.detach(), rec_loss=parts["rec"], l1_loss=parts["l1"], lpips_loss=parts["lpips"])
            if adversarial:
                ctx.log(gan_loss=parts["gan"], gan_weight=parts["gan_weight"])
            reconstructions.append(recon.detach())
        ctx.optimizer_step(self.opt_g)
        if not adversarial:
            return

        # The critic sees step 1's reconstructions: a second autoencoder pass would cost a forward and, in
        # training mode, fold the batch into the running alignment statistics twice.
        for x, fake in ctx.micro_batches(images, torch.cat(reconstructions)):
            loss, parts = self.criterion.discriminator_loss(x, fake, ctx.modules["discriminator"])
            ctx.backward(loss, for_optimizer=self.opt_d)
            ctx.log(**parts)
        ctx.optimizer_step(self.opt_d)

    @torch.no_grad()
    def on_sample(self, ctx: StepContext) -> None:
        """Reconstruct the preview images in eval mode (running alignment statistics): log PSNR, write a grid."""
        self.autoencoder.eval()
        with ctx.autocast():
            recon = self.autoencoder(self.preview).recon.float().clamp(-1, 1)
        ctx.log(preview_psnr=psnr(self.preview, recon).mean())
        if ctx.is_main:
            save_reconstruction_grid(self.preview, recon, ctx.out_dir / SAMPLES_FOLDER / f"recon_{ctx.step:08d}.png")


def save_reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path) -> Path:
    """A PNG with the originals in the top row and their reconstructions below."""
    return save_image_grid(torch.cat([originals, reconstructions]).cpu(), path, nrow=len(originals),
                           row_labels=["original", "reconstruction"])


def train_autoencoder(config: AutoencoderTrainConfig, resume: bool = False) -> Path:
    """Train as ``config`` says (continuing from the latest checkpoint with ``resume``); return the model folder.

    Runs as one process, or as one of N under torchrun (every rank returns after rank 0 has written the folder).
    """
    engine = Engine(config.engine)  # first: it seeds the initialization identically on every rank
    out_dir = Path(config.engine.out_dir)
    if engine.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    preview_data = build_dataset(config.data, "test", progress=False)
    preview = torch.stack([preview_data[i][0] for i in range(min(config.preview_images, len(preview_data)))])
    trainer = AutoencoderTrainer(config, engine.device, preview)
    engine.fit(trainer, build_dataset(config.data, "train", progress=engine.is_main), resume=resume)
    folder = out_dir / MODEL_FOLDER
    if engine.is_main:
        trainer.autoencoder.eval().save_pretrained(folder)
    barrier()
    return folder
