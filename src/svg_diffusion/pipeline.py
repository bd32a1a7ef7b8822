"""SVGPipeline: everything needed to turn class labels into images, saved and loaded as one folder.

    pipe = SVGPipeline.from_pretrained("runs/demo/pipeline")
    images = pipe(["Sneaker", "Bag"], num_steps=25, guidance_scale=4.0, generator=torch.Generator().manual_seed(0))

Sampling: noise [B, k, h, w] -> the sampler integrates the transformer's (guided) velocity on the shifted
time grid -> the transformer's coordinates -> ``latent_transform.decode`` (per-channel de-normalization, or
back from the top-k PCA coordinates) -> latent [B, C, h, w] -> ``autoencoder.decode`` -> images.

Folder layout (diffusers-style, every file written atomically):

    model_index.json          {"format": "svg-diffusion-pipeline", "class_names": [...], "sampling": {...}}
    autoencoder/              SVGAutoencoder.save_pretrained (with its frozen encoder in autoencoder/encoder/),
                              or the VAE baseline's KLAutoencoder.save_pretrained
    transformer/              DiT.save_pretrained
    latent_stats.safetensors  the per-channel latent transform (LatentStatistics.save: mean/std of the
                              training latents), or
    latent_transform/         any other latent transform (diffusion/latent_transform.py: a PCA's config.json
                              + transform.safetensors)

A pipeline without ``transformer/`` and a transform is valid: an autoencoder-only pipeline (e.g. a converted
public autoencoder) that encodes and decodes but cannot sample. Folders written before latent transforms
existed hold ``latent_stats.safetensors`` and load and sample exactly as before.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image

from .autoencoder import Autoencoder, load_autoencoder
from .config import from_dict, to_dict
from .diffusion import (
    AVERAGE_VELOCITY_SAMPLERS, SAMPLERS, DiT, DiTConfig, GuidanceConfig, get_sampler, guided_average_velocity,
    guided_velocity, time_grid,
)
from .diffusion.guidance import check_guidance_scale
from .diffusion.latent_transform import LatentTransform, load_latent_transform
from .diffusion.latents import LatentStatistics
from .diffusion.mean_flow import check_sampling_guidance
from .errors import SVGError
from .utils.checks import check_int, check_number
from .utils.images import to_pil, to_uint8
from .utils.pretrained import read_format_file, write_json
from .utils.shipped import shipped_pipeline

FORMAT = "svg-diffusion-pipeline"
INDEX_FILE = "model_index.json"
AUTOENCODER_FOLDER = "autoencoder"
TRANSFORMER_FOLDER = "transformer"
STATS_FILE = "latent_stats.safetensors"
TRANSFORM_FOLDER = "latent_transform"

OutputType = Literal["pil", "np", "pt", "latent"]
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
PRECISIONS = ("fp32", "bf16")


@dataclass
class FewStepDefaults:
    """The sampler and guidance of a call that asks for at most ``max_steps`` steps and names no sampler.

    For a MeanFlow transformer shipped with a many-step default (the demo: 25 guided Euler steps): asking it
    for 1, 2 or 4 steps then takes that many steps of the average velocity, with its guidance input at
    ``guidance.scale``, instead of a few Euler steps of the instantaneous velocity.
    """

    sampler: str = "mean_flow"
    max_steps: int = 4
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(scale=2.0))

    def __post_init__(self) -> None:
        check_int("max_steps", self.max_steps, at_least=1)
        get_sampler(self.sampler)


@dataclass
class SamplingDefaults:
    """The sampler settings a pipeline uses when a call does not name them (the paper's, by default).

    ``sampler`` is the default one; which samplers a pipeline runs at all follows from its transformer
    (:attr:`SVGPipeline.samplers`). A MeanFlow pipeline's default is ``mean_flow`` with a step or two, or a
    velocity sampler with ``few_steps`` naming ``mean_flow`` for calls of a few steps (:class:`FewStepDefaults`).
    """

    num_steps: int = 25
    sampler: str = "euler"
    shift: float = 1 / 0.15  # SD3 convention; the public code's sampling s = 0.15 (see diffusion/flow.py)
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(scale=1.5))
    few_steps: FewStepDefaults | None = None

    def __post_init__(self) -> None:
        check_int("num_steps", self.num_steps, at_least=1)
        check_number("shift", self.shift, above=0)
        get_sampler(self.sampler)  # an unknown name fails here, not at the first call
        if self.few_steps is not None and self.few_steps.max_steps >= self.num_steps:
            raise ValueError(f"few_steps.max_steps ({self.few_steps.max_steps}) must be below num_steps "
                             f"({self.num_steps}): the default is the many-step sampler")

    def for_call(self, num_steps: int | None, sampler: str | None) -> SamplingDefaults:
        """The defaults a call asking for ``num_steps`` with ``sampler`` starts from, without ``few_steps`` (the
        call's choice is made): the few-step sampler when the call asks for at most ``few_steps.max_steps`` and
        names no sampler, and the few-step guidance whenever that sampler is used (named or chosen); otherwise
        these defaults."""
        few = self.few_steps
        if few is not None and sampler is None and num_steps is not None and num_steps <= few.max_steps:
            sampler = few.sampler
        if few is not None and sampler == few.sampler != self.sampler:
            return replace(self, sampler=few.sampler, guidance=few.guidance, few_steps=None)
        return replace(self, few_steps=None)


def transformer_samplers(config: DiTConfig) -> list[str]:
    """The samplers a transformer of ``config`` runs: every velocity sampler, and ``mean_flow`` when it predicts
    average velocities (a MeanFlow DiT, ``interval_input``; at r = t it is a velocity model too)."""
    return [name for name in SAMPLERS if name not in AVERAGE_VELOCITY_SAMPLERS or config.interval_input]


def check_sampler(config: DiTConfig, sampler: str, guidance: GuidanceConfig) -> None:
    """A clear error unless a transformer of ``config`` can sample with ``sampler`` and ``guidance``."""
    get_sampler(sampler)  # an unknown name
    runs = transformer_samplers(config)
    if sampler not in runs:
        raise SVGError(f"sampler {sampler!r} needs a MeanFlow transformer (DiTConfig.interval_input); this "
                       f"pipeline's transformer is a flow-matching one: use one of {', '.join(runs)}")
    if sampler in AVERAGE_VELOCITY_SAMPLERS:
        if guidance.mode != "constant":
            raise SVGError(f"sampler {sampler!r} takes a constant guidance scale (the model's guidance input), "
                           f"not the {guidance.mode!r} guidance mode")
        check_sampling_guidance(config, guidance.scale)


def check_sampling_defaults(config: DiTConfig, sampling: SamplingDefaults) -> None:
    """:func:`check_sampler` on the default sampler and on the few-step one, when there is one."""
    check_sampler(config, sampling.sampler, sampling.guidance)
    if sampling.few_steps is not None:
        check_sampler(config, sampling.few_steps.sampler, sampling.few_steps.guidance)


def pipeline_transform(folder: str | Path) -> LatentTransform:
    """The latent transform a pipeline folder (or a shipped pipeline's name) samples in, or that of a transform
    folder itself (``svg-diffusion fit-latent-transform``'s)."""
    folder = Path(shipped_pipeline(folder))
    if (folder / INDEX_FILE).is_file():
        if (folder / TRANSFORM_FOLDER).is_dir():
            return load_latent_transform(folder / TRANSFORM_FOLDER)
        if not (folder / STATS_FILE).is_file():
            raise SVGError(f"{folder}: a pipeline without a latent transform ({TRANSFORM_FOLDER}/ or {STATS_FILE}): "
                           "one that only encodes and decodes")
        return LatentStatistics.load(folder / STATS_FILE)
    return load_latent_transform(folder)


class SVGPipeline:
    """Autoencoder + transformer + latent transform + class names + default sampler settings.

    ``latent_transform``: a :class:`LatentStatistics` (per-channel, the public recipe) or a ``PCATransform``.
    """

    def __init__(self, autoencoder: Autoencoder, transformer: DiT | None = None,
                 latent_transform: LatentTransform | None = None, class_names: Sequence[str] | None = None,
                 sampling: SamplingDefaults | None = None):
        if (transformer is None) != (latent_transform is None):
            raise SVGError("a pipeline needs both a transformer and its latent transform, or neither")
        if transformer is not None:
            if latent_transform.latent_channels != autoencoder.latent_channels:
                raise SVGError(f"the latent transform maps {latent_transform.latent_channels}-channel latents, "
                               f"the autoencoder's latent has {autoencoder.latent_channels}")
            modelled = (latent_transform.channels, autoencoder.latent_size)
            if (transformer.config.in_channels, transformer.config.input_size) != modelled:
                raise SVGError(f"the transformer models {transformer.config.in_channels}x{transformer.config.input_size}² "
                               f"latents, the autoencoder and latent transform make {modelled[0]}x{modelled[1]}²")
            if class_names is not None and len(class_names) != transformer.config.num_classes:
                raise SVGError(f"{len(class_names)} class names for a transformer with "
                               f"{transformer.config.num_classes} classes")
        self.autoencoder = autoencoder.eval()
        self.transformer = transformer.eval() if transformer is not None else None
        self.latent_transform = latent_transform
        self.class_names = list(class_names) if class_names is not None else None
        self.sampling = sampling or SamplingDefaults()
        if transformer is not None:  # the defaults must run: fail when the pipeline is made, not at its first call
            check_sampling_defaults(transformer.config, self.sampling)

    @property
    def samplers(self) -> list[str]:
        """The samplers its transformer runs (:func:`transformer_samplers`)."""
        return transformer_samplers(self._require_transformer().config)

    @property
    def latent_stats(self) -> LatentStatistics | None:
        """The per-channel statistics of the training latents (a PCA transform standardizes with them first)."""
        transform = self.latent_transform
        return transform if transform is None or isinstance(transform, LatentStatistics) else transform.stats

    # ---------------------------------------------------------------------------------------------- device

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.decoder.parameters()).device

    def to(self, device: torch.device | str) -> SVGPipeline:
        self.autoencoder.to(device)
        if self.transformer is not None:
            self.transformer.to(device)
        return self

    # ------------------------------------------------------------------------------------------ save/load

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.autoencoder.save_pretrained(folder / AUTOENCODER_FOLDER)
        if self.transformer is not None:
            self.transformer.save_pretrained(folder / TRANSFORMER_FOLDER)
            # One transform per folder: a stale one of the other kind would be loaded in its place.
            if isinstance(self.latent_transform, LatentStatistics):  # the file pipelines have always had
                shutil.rmtree(folder / TRANSFORM_FOLDER, ignore_errors=True)
                self.latent_transform.save(folder / STATS_FILE)
            else:
                (folder / STATS_FILE).unlink(missing_ok=True)
                self.latent_transform.save(folder / TRANSFORM_FOLDER)
        # The index goes last: a folder with an index is complete.
        write_json(folder / INDEX_FILE, {"format": FORMAT, "class_names": self.class_names,
                                         "sampling": to_dict(self.sampling)})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> SVGPipeline:
        """Load a folder written by :meth:`save_pretrained`, or a shipped pipeline by name (``demo-pipeline``)."""
        folder = Path(shipped_pipeline(folder))
        index_path = folder / INDEX_FILE
        index = read_format_file(index_path, FORMAT, "an SVG pipeline folder")
        sampling = from_dict(SamplingDefaults, index.get("sampling", {}), where=f"{index_path}: sampling")
        autoencoder = load_autoencoder(folder / AUTOENCODER_FOLDER)  # SVG or the VAE baseline
        transformer = transform = None
        if (folder / TRANSFORMER_FOLDER).is_dir():
            transformer = DiT.from_pretrained(folder / TRANSFORMER_FOLDER)
            transform = pipeline_transform(folder)
        return cls(autoencoder, transformer, transform, index.get("class_names"), sampling).to(device)

    # ---------------------------------------------------------------------------------------------- labels

    def class_index(self, label: int | str) -> int:
        """A class index from an index or a class name (case-insensitive)."""
        num_classes = self.transformer.config.num_classes
        if isinstance(label, str):
            names = [name.lower() for name in self.class_names or []]
            if label.lower() not in names:
                known = ", ".join(self.class_names) if self.class_names else "this pipeline has no class names"
                raise SVGError(f"unknown class {label!r} (known: {known})")
            return names.index(label.lower())
        if not 0 <= int(label) < max(num_classes, 1):
            raise SVGError(f"class label {label} is out of range: the model has {num_classes} classes")
        return int(label)

    # ---------------------------------------------------------------------------------------------- sampling

    def _require_transformer(self) -> DiT:
        if self.transformer is None:
            raise SVGError("this pipeline has only an autoencoder: it has no transformer to sample with")
        return self.transformer

    def noise_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        cfg = self._require_transformer().config
        return (batch_size, cfg.in_channels, cfg.input_size, cfg.input_size)

    def sampling_settings(self, num_steps: int | None = None, guidance_scale: float | None = None,
                          shift: float | None = None, sampler: str | None = None,
                          guidance: GuidanceConfig | None = None) -> SamplingDefaults:
        """The settings a call with these arguments samples with: ``self.sampling`` where an argument is None
        (its ``few_steps`` sampler and guidance for a call of a few steps naming no sampler).

        ``guidance_scale`` replaces the scale of ``guidance``. A value out of its range raises ValueError naming
        the argument (``SamplingDefaults`` checks ``num_steps``, ``shift`` and the sampler's name); a sampler the
        transformer cannot run, or a guidance it cannot take, raises SVGError (:func:`check_sampler`). Commands
        call it to fail before they start sampling.
        """
        chosen = {"num_steps": num_steps, "shift": shift, "sampler": sampler, "guidance": guidance}
        settings = replace(self.sampling.for_call(num_steps, sampler),
                           **{name: value for name, value in chosen.items() if value is not None})
        if guidance_scale is not None:
            settings = replace(settings, guidance=replace(settings.guidance,
                                                          scale=check_guidance_scale("guidance_scale", guidance_scale)))
        check_sampler(self._require_transformer().config, settings.sampler, settings.guidance)
        return settings

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int | str] | torch.Tensor, num_steps: int | None = None,
                 guidance_scale: float | None = None, shift: float | None = None, sampler: str | None = None,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: OutputType = "pil", guidance: GuidanceConfig | None = None,
                 precision: Literal["fp32", "bf16"] = "fp32", batched_cfg: bool = True, progress: bool = False,
                 **sampler_kwargs) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Generate one image per label.

        - ``class_labels``: indices or class names; ``num_steps``, ``shift``, ``sampler``: default to
          ``self.sampling``. ``guidance_scale`` overrides the scale of ``guidance`` (default
          ``self.sampling.guidance``); 1.0 is no guidance. A value out of its range (``num_steps`` < 1,
          ``shift`` <= 0, ``guidance_scale`` < 0, NaN or infinite) raises ValueError before anything is computed.
        - ``sampler``: one of :attr:`samplers`. ``"mean_flow"`` (a MeanFlow transformer) takes ``num_steps``
          steps of the average velocity on the shifted grid, one forward each: its guidance is the model's
          guidance input (a constant scale; a model without the input samples only at scale 1), not CFG.
        - ``latents``: the initial noise [B, C, h, w] (the public code's token layout is
          ``x.flatten(2).transpose(1, 2)``); otherwise drawn with ``generator`` on its device (CPU by
          default, so a seed gives the same images on every device).
        - ``output_type``: ``"pil"`` (list of images), ``"np"`` (uint8 [B, H, W, 3]), ``"pt"`` (float
          [B, 3, H, W] in [-1, 1]) or ``"latent"`` (the latent that ``autoencoder.decode`` takes, after the
          latent transform's ``decode``).
        - ``precision="bf16"``: the transformer and the decoder run under bfloat16 autocast (the latent transform,
          a few element-wise operations or one small matmul, stays fp32); images come back as float32. On
          the shipped demo (25 steps) bf16 images differ from fp32 ones by ~0.002 on average in [-1, 1], single
          pixels by up to ~0.2 (tests/test_demo.py).
        - ``batched_cfg``: the guided and unguided branches as one forward of twice the batch (the default: faster
          on GPUs and busy CPUs) or, ``False``, as two forwards (faster on an idle CPU: DiT-S 1.13x,
          docs/results.md); the samples agree to fp32 rounding.
        - ``sampler_kwargs`` go to the sampler (e.g. ``order=3`` for ``adams_bashforth``); the SDE sampler
          also gets ``generator``.
        """
        transformer = self._require_transformer()
        if output_type not in OUTPUT_TYPES:
            raise SVGError(f"unknown output_type {output_type!r} (one of {', '.join(OUTPUT_TYPES)})")
        if precision not in PRECISIONS:
            raise SVGError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
        settings = self.sampling_settings(num_steps, guidance_scale, shift, sampler, guidance)
        labels = (class_labels.tolist() if isinstance(class_labels, torch.Tensor) else list(class_labels))
        if not labels:
            raise SVGError("no class labels given")
        device = self.device
        y = torch.tensor([self.class_index(label) for label in labels], device=device)
        if latents is None:
            noise_device = generator.device if generator is not None else torch.device("cpu")
            latents = torch.randn(self.noise_shape(len(y)), generator=generator, device=noise_device)
        elif tuple(latents.shape) != self.noise_shape(len(y)):
            raise SVGError(f"latents must have shape {list(self.noise_shape(len(y)))}, got {list(latents.shape)}")
        noise = latents.to(device=device, dtype=torch.float32)

        if settings.sampler == "euler_maruyama":
            sampler_kwargs.setdefault("generator", generator)
        times = time_grid(settings.num_steps, settings.shift, device=device)
        if settings.sampler in AVERAGE_VELOCITY_SAMPLERS:
            model_fn = guided_average_velocity(transformer, y, settings.guidance.scale)
        else:
            model_fn = guided_velocity(transformer, y, settings.guidance, settings.num_steps, batched=batched_cfg)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with autocast:
            normalized = get_sampler(settings.sampler)(model_fn, noise, times, progress=progress, **sampler_kwargs)
        latent = self.latent_transform.decode(normalized)
        if output_type == "latent":
            return latent
        with autocast:
            images = self.autoencoder.decode(latent).float().clamp(-1, 1)
        if output_type == "pt":
            return images
        if output_type == "np":
            return to_uint8(images)
        return [to_pil(image) for image in images]
