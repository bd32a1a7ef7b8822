"""Training the SVG autoencoder: ``svg-diffusion train-autoencoder --config FILE`` / ``train_autoencoder(config)``.

Per step (the paper's recipe, docs/autoencoder.md), on the engine of ``svg_diffusion.training``:

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

Fine-tuning. ``init_from`` starts from a trained autoencoder's weights (same architecture; with
``init_from_subset`` a slimmer one, e.g. a decoder with fewer ``num_res_blocks``, takes the weights it shares by
name and shape, and the source's others are dropped: a cheaper decoder that starts close to the trained one). With
``train_parts: decoder`` the latent is fixed (residual encoder and alignment frozen in eval mode, no residual
masking): only the decoder and the critic learn, so a latent cache, latent statistics and a diffusion model
trained on the old autoencoder stay valid for the new one. ``latent_noise`` τ > 0 then trains the decoder on
z + σ·s·ε with σ ~ τ·U(0, 1) per sample and s the per-channel std of the latents (measured once at the start
over the first training images): a decoder that tolerates the small errors of generated latents (RAE).
With ``latent_noise_transform`` (a pipeline, or a latent transform folder) the noise is added where a diffusion
model of that transform makes its errors instead: the decoder learns from T.decode(T.encode(z) + σ·ε), ε in the
transform's modelled (for ``pca``: whitened, unit-variance) coordinates, so it also learns the projection onto
the transform's subspace that every generated latent has (τ = 0: the projection alone).

With ``latent_denoiser`` (a pipeline with a transformer that samples in that transform) a fraction
``latent_denoise_fraction`` of the samples instead gets the latent the DiT makes of it in the last step of a
sampler: in the modelled coordinates m = T.encode(z), z_t = t·m + (1 - t)·ε with t ~ U(``latent_denoise_times``)
and ε ~ N(0, I), then one guided Euler step to t = 1, m' = z_t + (1 - t)·v(z_t, t, y) (the DiT's estimate of the
clean latent: a posterior mean, smoother the noisier z_t), decoded from T.decode(m') towards the image itself.
Few-step samplers end with such a step from a noisy t (5 Euler steps on shift 2: from t = 0.67), so their
latents are smoothed the same way; a decoder that has seen them renders them sharp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..autoencoder.losses import AutoencoderLoss, LossConfig
from ..autoencoder.model import AutoencoderConfig, AutoencoderOutput, SVGAutoencoder
from ..autoencoder.vae import Autoencoder, VAEConfig, build_autoencoder, load_autoencoder
from ..config import ConfigError, PathOrName, from_dict, save_config
from ..data import DataConfig, build_dataset, random_hflip
from ..diffusion.guidance import GuidanceConfig, guided_velocity
from ..diffusion.latent_transform import LatentTransform, transform_state
from ..diffusion.latents import LatentMoments
from ..errors import SVGError
from ..evaluation.image_metrics import psnr
from ..pipeline import SVGPipeline, pipeline_transform
from ..training import Engine, EngineConfig, StepContext, Trainer
from ..training.distributed import barrier
from ..utils.checks import check_each, check_int, check_interval, check_number
from ..utils.images import save_image_grid
from ..utils.pretrained import load_state_dict_strict, same_state
from .warm_start import weights_digest

MODEL_FOLDER = "autoencoder"
SAMPLES_FOLDER = "samples"


@dataclass
class OptimizerConfig:
    """Adam for both players, the paper's recipe: lr 1e-4, betas (0.5, 0.9)."""

    lr: float = 1e-4
    disc_lr: float | None = None  # None: the same as lr
    betas: tuple[float, float] = (0.5, 0.9)

    def __post_init__(self):
        check_number("lr", self.lr, above=0)
        if self.disc_lr is not None:  # null: the same as lr
            check_number("disc_lr", self.disc_lr, above=0)
        check_each(check_number, "betas", self.betas, at_least=0, below=1)


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
    init_from: PathOrName | None = None  # an autoencoder folder (or a pipeline folder holding one) to start from
    # The model may drop weights of init_from's (a decoder with fewer residual blocks per level); each weight it has
    # must still be in init_from with its shape
    init_from_subset: bool = False
    train_parts: Literal["all", "decoder"] = "all"
    latent_noise: float = 0.0  # τ, with train_parts: decoder (see the module docstring)
    latent_noise_images: int = 1024  # training images whose latents give the per-channel std s
    # A pipeline (or a latent transform folder) whose transform T the noise is added in (see the module docstring)
    latent_noise_transform: PathOrName | None = None
    # A pipeline whose transformer denoises a fraction of the latents before decoding (see the module docstring);
    # its latent transform is latent_noise_transform's (the default when that is not set)
    latent_denoiser: PathOrName | None = None
    latent_denoise_fraction: float = 0.5
    latent_denoise_times: tuple[float, float] = (0.5, 1.0)  # t (0: noise, 1: data) ~ U(lo, hi)
    latent_denoise_guidance: float | None = None  # the CFG scale of the DiT's step; None: the pipeline's default

    def __post_init__(self):
        if isinstance(self.model, dict):  # from a file: ``kind`` picks the class first, so errors name the right key
            if self.model.get("kind", "vae") != "vae":
                raise ConfigError(f"model.kind: expected 'vae' (or no kind: the SVG autoencoder), got {self.model['kind']!r}")
            self.model = from_dict(VAEConfig if "kind" in self.model else AutoencoderConfig, self.model, where="model")
        if not isinstance(self.model, (AutoencoderConfig, VAEConfig)):
            raise ConfigError(f"model: expected a mapping, got {self.model!r}")
        if self.data.image_size != self.model.image_size:
            raise ValueError(f"data.image_size {self.data.image_size} differs from model.image_size {self.model.image_size}")
        check_int("preview_images", self.preview_images, at_least=1)
        if self.train_parts not in ("all", "decoder"):
            raise ValueError(f"train_parts must be 'all' or 'decoder', got {self.train_parts!r}")
        check_number("latent_noise", self.latent_noise, at_least=0)
        if self.latent_noise > 0 and self.train_parts != "decoder":
            raise ValueError("latent_noise needs train_parts: decoder (a trained encoder would learn to outgrow the noise)")
        if self.train_parts == "decoder" and (self.init_from is None or isinstance(self.model, VAEConfig)):
            raise ValueError("train_parts: decoder fine-tunes the decoder of a trained SVG autoencoder: set init_from")
        check_int("latent_noise_images", self.latent_noise_images, at_least=2)
        if self.init_from_subset and self.init_from is None:
            raise ValueError("init_from_subset needs init_from (the autoencoder whose weights the model takes)")
        if self.latent_noise_transform is not None and self.train_parts != "decoder":
            raise ValueError("latent_noise_transform needs train_parts: decoder (the latent must stay the transform's)")
        if self.latent_denoiser is not None and self.train_parts != "decoder":
            raise ValueError("latent_denoiser needs train_parts: decoder (the latent must stay the DiT's)")
        check_number("latent_denoise_fraction", self.latent_denoise_fraction, above=0, at_most=1)
        check_interval("latent_denoise_times", self.latent_denoise_times, at_least=0, at_most=1)
        if self.latent_denoise_guidance is not None:
            check_number("latent_denoise_guidance", self.latent_denoise_guidance, at_least=0)


class TrainedParts(nn.Module):
    """The autoencoder's trained submodules (residual encoder, alignment, decoder; a VAE's all) as one module.

    Its parameters and state dict are those of the trained parts only (the keys of ``model.safetensors``),
    so DDP synchronizes and checkpoints store nothing of the frozen encoder; its forward is the whole
    autoencoder's, which uses these very submodules.
    """

    def __init__(self, autoencoder: Autoencoder, decoder_only: bool = False):
        super().__init__()
        modules = autoencoder._trained_modules()
        for name, module in ({"decoder": modules["decoder"]} if decoder_only else modules).items():
            self.add_module(name, module)
        object.__setattr__(self, "autoencoder", autoencoder)  # not a submodule: keeps the frozen encoder out
        self.decoder_only = decoder_only

    def forward(self, images: torch.Tensor, extra: torch.Tensor | None = None,
                perturb: Callable[[torch.Tensor], torch.Tensor] | None = None,
                noise_transform: LatentTransform | None = None):
        """The autoencoder's forward: ``extra`` is the residual mask (SVG) or the posterior noise (VAE).

        Decoder-only: the latent is computed without gradients by the frozen parts, changed by ``perturb``
        (e.g. noise added; None: unchanged) in the coordinates of ``noise_transform`` when given (through its
        encode and decode, in float32), and only the decoder runs with gradients.
        """
        if not self.decoder_only:
            return self.autoencoder(images, extra)
        with torch.no_grad():
            latent = self.autoencoder.encode(images)
            if noise_transform is not None:  # in float32: autocast would round the projection to bf16
                with torch.autocast(latent.device.type, enabled=False):
                    modelled = noise_transform.encode(latent.float())
                    latent = noise_transform.decode(modelled if perturb is None else perturb(modelled)).to(latent.dtype)
            elif perturb is not None:
                latent = perturb(latent)
        return AutoencoderOutput(self.autoencoder.decode(latent), latent)


class AutoencoderTrainer(Trainer):
    """Generator (residual encoder + decoder) and PatchGAN updates of the SVG autoencoder; see the module docstring."""

    def __init__(self, config: AutoencoderTrainConfig, device: torch.device, preview: torch.Tensor,
                 train_images: Dataset | None = None):
        self.config = config
        self.autoencoder = build_autoencoder(config.model).to(device)
        self.is_vae = isinstance(config.model, VAEConfig)
        # names of init_from's weights the model has no place for (init_from_subset)
        self.dropped_weights = ([] if config.init_from is None else
                                load_trained_weights(self.autoencoder, config.init_from, config.init_from_subset))
        self.noise_transform = (None if config.latent_noise_transform is None
                                else noise_transform(config.latent_noise_transform, self.autoencoder))
        self.denoiser = None if config.latent_denoiser is None else self._load_denoiser(device)
        # the per-channel std s of z + σ·s·ε; a transform's coordinates have their own scale
        self.noise_std = (latent_channel_std(self.autoencoder, train_images, config.latent_noise_images, device)
                          if config.latent_noise > 0 and self.noise_transform is None else None)
        decoder_only = config.train_parts == "decoder"
        if decoder_only:  # the latent is fixed: running alignment statistics frozen, no residual masking
            for name, module in self.autoencoder._trained_modules().items():
                if name != "decoder":
                    module.eval().requires_grad_(False)
        self.trained = TrainedParts(self.autoencoder, decoder_only)
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
        images, labels = batch
        if self.config.data.hflip:
            images = random_hflip(images, ctx.generator("hflip"), ctx.global_batch_size, ctx.batch_offset)
        model = self.autoencoder
        latent_shape = (model.latent_channels, model.latent_size, model.latent_size)
        if self.is_vae:  # posterior noise, drawn for the global batch like the SVG mask
            extra = ctx.randn("posterior", *latent_shape)
        elif self.trained.decoder_only:
            extra = torch.zeros(len(images), dtype=torch.bool, device=images.device)  # unused: nothing is masked
        else:
            extra = ctx.local_rows(model.draw_residual_mask(ctx.global_batch_size, ctx.generator("residual_mask")))
        noisy = self.config.latent_noise > 0
        if noisy:  # σ·s·ε (or σ·ε in the transform's coordinates), σ ~ τ·U(0, 1) per sample, for the global batch
            sigma = self.config.latent_noise * ctx.rand("latent_noise_level").view(-1, 1, 1, 1)
            if self.noise_transform is None:
                noise = sigma * self.noise_std.view(1, -1, 1, 1) * ctx.randn("latent_noise", *latent_shape)
            else:
                noise = sigma * ctx.randn("latent_noise", self.noise_transform.channels, *latent_shape[1:])
        else:
            noise = torch.zeros(len(images), device=images.device)  # a placeholder micro_batches can split
        denoised = self.denoiser is not None
        if denoised:  # which samples the DiT denoises, from which t and noise, for the global batch
            low, high = self.config.latent_denoise_times
            picked = ctx.rand("latent_denoise_pick") < self.config.latent_denoise_fraction
            times = low + (high - low) * ctx.rand("latent_denoise_time")
            start = ctx.randn("latent_denoise_noise", self.noise_transform.channels, *latent_shape[1:])
        else:
            picked = times = start = torch.zeros(len(images), device=images.device)
        adversarial = self.criterion.gan_active(ctx.step)

        reconstructions = []
        for x, e, n, y, p, t, z in ctx.micro_batches(images, extra, noise, labels, picked, times, start):
            perturb = self._perturbation(n if noisy else None, (p, t, z, y) if denoised else None)
            out = ctx.modules["autoencoder"](x, e, perturb, self.noise_transform)
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

    def _load_denoiser(self, device: torch.device) -> nn.Module:
        """The transformer of ``latent_denoiser`` (eval mode, frozen), after checking that it samples in the
        noise transform (taken from the pipeline when ``latent_noise_transform`` is not set)."""
        source = self.config.latent_denoiser
        pipeline = SVGPipeline.from_pretrained(source, device=device)
        if pipeline.transformer is None:
            raise SVGError(f"latent_denoiser {source}: the pipeline has no transformer")
        if self.noise_transform is None:
            self.noise_transform = noise_transform(source, self.autoencoder, pipeline.latent_transform)
        elif not same_transform(transform_state(self.noise_transform), transform_state(pipeline.latent_transform)):
            raise SVGError(f"latent_denoiser {source}: its transformer samples in another latent transform than "
                           f"latent_noise_transform {self.config.latent_noise_transform}")
        scale = self.config.latent_denoise_guidance
        self.denoise_guidance = GuidanceConfig(scale=pipeline.sampling.guidance.scale if scale is None else scale)
        self.denoiser_digest = weights_digest(source)  # of the weights loaded, checked on a resume
        return pipeline.transformer.eval().requires_grad_(False)

    def _perturbation(self, noise: torch.Tensor | None, denoise: tuple | None):
        """The ``perturb`` of :meth:`TrainedParts.forward` for one micro-batch: add ``noise``, and replace the
        rows ``denoise`` picks (picked, t, start noise, labels) by the DiT's one-step estimate from z_t."""
        if noise is None and denoise is None:
            return None

        def perturb(latent: torch.Tensor) -> torch.Tensor:
            out = latent if noise is None else latent + noise.to(latent.dtype)
            if denoise is not None:
                picked, times, start, labels = denoise
                if picked.any():
                    t = times[picked].view(-1, 1, 1, 1)
                    noisy = t * latent[picked] + (1 - t) * start[picked]
                    velocity = guided_velocity(self.denoiser, labels[picked], self.denoise_guidance, num_steps=1)
                    out = out.clone()
                    out[picked] = noisy + (1 - t) * velocity(noisy, times[picked], 0)
            return out

        return perturb

    @torch.no_grad()
    def state_dict(self) -> dict:
        state = {} if self.denoiser is None else {"latent_denoiser": self.denoiser_digest}
        if self.noise_transform is not None:  # read again from the config on a resume: kept to check it is the same
            return {**state, "latent_noise_transform": transform_state(self.noise_transform)}
        return {} if self.noise_std is None else {"latent_noise_std": self.noise_std}

    def load_state_dict(self, state: dict) -> None:
        if self.denoiser is not None and state.get("latent_denoiser") != self.denoiser_digest:
            raise SVGError(f"latent_denoiser {self.config.latent_denoiser}: not the transformer the checkpoint was "
                           "trained with (its weights changed): resume with the original one")
        if self.noise_transform is not None:
            if not same_transform(transform_state(self.noise_transform), state.get("latent_noise_transform", {})):
                raise SVGError(f"latent_noise_transform {self.config.latent_noise_transform}: not the transform the "
                               "checkpoint was trained with (it changed): resume with the original one")
        elif self.noise_std is not None:
            self.noise_std = state["latent_noise_std"].to(self.noise_std.device)
        else:
            super().load_state_dict(state)

    def on_sample(self, ctx: StepContext) -> None:
        """Reconstruct the preview images in eval mode (running alignment statistics): log PSNR, write a grid."""
        self.autoencoder.eval()
        with ctx.autocast():
            recon = self.autoencoder(self.preview).recon.float().clamp(-1, 1)
        ctx.log(preview_psnr=psnr(self.preview, recon).mean())
        if ctx.is_main:
            save_reconstruction_grid(self.preview, recon, ctx.out_dir / SAMPLES_FOLDER / f"recon_{ctx.step:08d}.png")


def load_trained_weights(autoencoder: Autoencoder, folder: str | Path, subset: bool = False) -> list[str]:
    """Copy a saved autoencoder's trained weights (``model.safetensors``) into ``autoencoder``, strictly; return
    the names of the source's weights left out (none unless ``subset``).

    ``folder`` is an autoencoder folder or a pipeline folder holding one; its architecture must be
    ``autoencoder``'s (a missing, unexpected or misshapen key fails by name), or with ``subset`` contain it
    (only the source's extra keys are allowed). The frozen encoders must be equal too: a decoder trained on
    other features would be meaningless.
    """
    source = load_autoencoder(folder)
    if type(source) is not type(autoencoder):
        raise SVGError(f"init_from {folder}: a {type(source).__name__}, but the config describes a {type(autoencoder).__name__}")
    if isinstance(source, SVGAutoencoder):
        own, theirs = autoencoder.encoder.vit.state_dict(), source.encoder.vit.state_dict()
        if not same_state(own, theirs):
            raise SVGError(f"init_from {folder}: its frozen encoder differs from the config's model.encoder")
    target = autoencoder._trained_modules()
    state, dropped = source._trained_modules().state_dict(), []
    if subset:
        own_keys = target.state_dict().keys()
        dropped = [key for key in state if key not in own_keys]
        state = {key: value for key, value in state.items() if key in own_keys}
    load_state_dict_strict(target, state, str(folder), "the autoencoder")
    return dropped


def same_transform(ours: dict, theirs: dict) -> bool:
    """Whether two latent transforms' states (``transform_state``) are of the same kind with equal values."""
    ours, theirs = dict(ours), dict(theirs)
    return ours.pop("kind", None) == theirs.pop("kind", None) and same_state(ours, theirs)


def noise_transform(source: str | Path, autoencoder: Autoencoder,
                    transform: LatentTransform | None = None) -> LatentTransform:
    """The latent transform of ``source`` (a pipeline folder or name, or a transform folder; ``transform`` when
    already loaded from it), checked to map ``autoencoder``'s latents."""
    transform = pipeline_transform(source) if transform is None else transform
    if transform.latent_channels != autoencoder.latent_channels:
        raise SVGError(f"latent_noise_transform {source}: it maps {transform.latent_channels}-channel latents, "
                       f"the autoencoder makes {autoencoder.latent_channels}")
    return transform


@torch.no_grad()
def latent_channel_std(autoencoder: SVGAutoencoder, dataset: Dataset, count: int, device: torch.device) -> torch.Tensor:
    """Per-channel std (float32 [C]) of the latents of the first ``count`` images of ``dataset`` (eval mode)."""
    was_training = autoencoder.training
    autoencoder.eval()
    moments = LatentMoments(autoencoder.latent_channels, device)
    loader = DataLoader(Subset(dataset, range(min(count, len(dataset)))), batch_size=256, shuffle=False)
    for images, _ in loader:
        moments.add(autoencoder.encode(images.to(device)).float())
    autoencoder.train(was_training)
    return moments.statistics().std.to(device)


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
    train_images = build_dataset(config.data, "train", progress=engine.is_main)
    trainer = AutoencoderTrainer(config, engine.device, preview, train_images)
    if trainer.dropped_weights:
        modules = sorted({key.rsplit(".", 1)[0] for key in trainer.dropped_weights})
        engine.print(f"init_from: {len(trainer.dropped_weights)} weights of {len(modules)} modules left out "
                     f"({', '.join(modules[:3])}{', ...' if len(modules) > 3 else ''})")
    engine.fit(trainer, train_images, resume=resume)
    folder = out_dir / MODEL_FOLDER
    if engine.is_main:
        trainer.autoencoder.eval().save_pretrained(folder)
    barrier()
    return folder
