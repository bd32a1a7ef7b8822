"""Training the latent diffusion transformer: ``svg-diffusion train --config FILE`` / ``train_diffusion(config)``.

Per step, on the engine of ``svg_diffusion.training`` (so one process equals N and resumes are exact):

1. this rank's latents: the batch's images encoded by the frozen autoencoder (mirrored first for the
   samples the step's ``hflip`` coins pick, when ``data.hflip``), or, with a latent cache, the cached
   latent of each image or of its mirror under the same coins; then mapped through the latent transform
   (per-channel normalization, or the whitened top-k PCA coordinates: ``latent_transform``);
2. noise, times and label drops drawn for the GLOBAL batch from the step's ``flow`` generator, this rank's
   rows (``draw_flow_inputs``);
3. the flow-matching MSE through the (DDP) transformer, an AdamW step, the EMA update.

With a ``mean_flow`` section the objective is MeanFlow instead (average velocities, one-step sampling:
``trainers/mean_flow.py``). ``init_from`` starts the run from a trained pipeline's transformer, in its latent
transform (``trainers/warm_start.py``): a MeanFlow run warm-starts it, and with ``mean_flow.distill`` keeps
it, frozen, as the teacher. The teacher is read again from ``init_from`` on a resume (checkpoints hold only
the digest of its weights file, and a resume refuses a changed one).

The latent transform is fixed before training. Per-channel: the statistics are read from ``latent_stats`` (a
file), from the cache, or computed over the training split, and written to ``out_dir/latent_stats.safetensors``.
PCA: read from ``latent_transform.path``, or fitted over the cache (streamed shard by shard) or the encoded
training split, and written to ``out_dir/latent_transform/``. Either is kept in every checkpoint, so a
resumed run uses the very same one. Every ``engine.sample_every`` steps and at the
end, the EMA transformer draws a class-conditional grid (``out_dir/samples/step_XXXXXXXX.png``, one labelled
row per class). At the end ``out_dir/pipeline`` is a complete :class:`SVGPipeline` with the EMA transformer.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..autoencoder import Autoencoder, load_autoencoder
from ..config import ConfigPath, PathOrName, from_dict, save_config, to_dict
from ..data import DataConfig, build_dataset, random_hflip
from ..diffusion.flow import FlowMatchingConfig, draw_flow_inputs, flow_matching_loss
from ..diffusion.guidance import check_guidance_scale
from ..diffusion.latent_transform import (
    LatentTransform, LatentTransformConfig, check_transform, fit_latent_transform, load_latent_transform,
    save_latent_transform, transform_from_state, transform_state,
)
from ..diffusion.latents import (
    LatentCacheDataset, LatentStatistics, autoencoder_fingerprint, cache_latents, compute_latent_statistics,
    encode_latents, encoded_batches,
)
from ..diffusion.transformer import DIT_SIZES, DiT, DiTConfig
from ..errors import SVGError
from ..pipeline import STATS_FILE, TRANSFORM_FOLDER, SamplingDefaults, SVGPipeline, check_sampling_defaults
from ..sample_writer import class_labels, write_samples
from ..training import EMA, Engine, EngineConfig, StepContext, Trainer, derive_seed
from ..training.distributed import barrier, rank_and_world_size, setup_distributed
from ..utils.checks import check_each, check_int, check_number
from .mean_flow import SAMPLER as MEAN_FLOW_SAMPLER
from .mean_flow import MeanFlowTrainConfig, mean_flow_sampling, mean_flow_step, mean_flow_transformer, sampling_guidance
from .warm_start import MEAN_FLOW_INPUTS, load_start_pipeline, start_transform, start_transformer, weights_digest

PIPELINE_FOLDER = "pipeline"
SAMPLES_FOLDER = "samples"
DERIVED_FIELDS = ("in_channels", "input_size", "num_classes")  # set by the autoencoder and the data


@dataclass
class TransformerConfig:
    """The transformer: a named size (S, B, L, XL) and any :class:`DiTConfig` fields that override it.

    ``in_channels``, ``input_size`` and ``num_classes`` are not set here: they come from the autoencoder's
    latent and the dataset's classes; nor are ``interval_input`` and ``guidance_input``: the objective sets them.
    """

    size: str = "XL"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size not in DIT_SIZES:
            raise ValueError(f"size must be one of {', '.join(DIT_SIZES)}, got {self.size!r}")
        valid = {f.name for f in dataclasses.fields(DiTConfig)} - set(DERIVED_FIELDS)
        for key in self.overrides:
            if key in DERIVED_FIELDS:
                raise ValueError(f"overrides.{key} is set by the autoencoder and the data, not by the config")
            if key in MEAN_FLOW_INPUTS:
                raise ValueError(f"overrides.{key} is set by the objective (a mean_flow section), not by the model")
            if key not in valid:
                raise ValueError(f"overrides.{key}: unknown DiTConfig field (valid: {', '.join(sorted(valid))})")

    def build(self, in_channels: int, input_size: int, num_classes: int) -> DiTConfig:
        fields = {**to_dict(DiTConfig.from_size(self.size)), **self.overrides,
                  "in_channels": in_channels, "input_size": input_size, "num_classes": num_classes}
        return from_dict(DiTConfig, fields, where="model")


@dataclass
class AdamWConfig:
    """AdamW over the transformer; the defaults are the paper's recipe (no weight decay, no schedule)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_number("lr", self.lr, above=0)
        check_each(check_number, "betas", self.betas, at_least=0, below=1)
        check_number("weight_decay", self.weight_decay, at_least=0)


@dataclass
class PreviewConfig:
    """The class-conditional grid drawn with the EMA transformer every ``engine.sample_every`` steps.

    ``classes``: class indices, one grid row each (None: every class, at most the first 10);
    ``guidance_scale``: pictures want more guidance than FID (the paper: ~4 vs 1.5); ``num_steps``: None
    is ``sampling.num_steps``. The noise is fixed by ``seed``, so grids of successive steps compare. A
    MeanFlow run draws it with the ``mean_flow`` sampler, at ``guidance_scale`` brought into
    ``mean_flow.guidance_range`` (or at 1 without one: its guidance is fixed in training).
    """

    classes: list[int] | None = None
    per_class: int = 8
    guidance_scale: float = 4.0
    num_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.classes is not None:  # the upper bound is the model's number of classes, checked when drawing
            check_each(check_int, "classes", self.classes, at_least=0)
        check_int("per_class", self.per_class, at_least=1)
        check_guidance_scale("guidance_scale", self.guidance_scale)
        if self.num_steps is not None:
            check_int("num_steps", self.num_steps, at_least=1)
        check_int("seed", self.seed, at_least=0)


@dataclass
class DiffusionTrainConfig:
    """The ``train`` config file. See docs/diffusion.md ("Training") and configs/*/diffusion.yaml.

    - ``autoencoder``: the trained autoencoder's folder (``train-autoencoder``'s ``out_dir/autoencoder``)
      or a pipeline folder holding one.
    - ``data``: the training images (split "train"); ``data.hflip`` mirrors half of each batch.
    - ``latent_cache``: a folder written by ``cache-latents`` from this very ``data`` and ``autoencoder``;
      training then reads latents instead of encoding (None: encode online).
    - ``latent_stats``: a ``latent_stats.safetensors`` file to use (None: the cache's, or computed).
    - ``latent_transform``: what the transformer models (``per_channel``, the default, or ``pca``; see
      :class:`LatentTransformConfig`).
    - ``mean_flow``: train the MeanFlow objective with these options (None: flow matching).
    - ``init_from``: a trained pipeline folder (or a shipped pipeline's name) whose transformer starts the run
      (warm-started for MeanFlow), trained on the same latents; the run then models its latent transform.
    - ``sampling``: the sampler settings the final pipeline gets (None: the objective's defaults, the paper's
      for flow matching, :func:`.mean_flow.mean_flow_sampling` for MeanFlow).
    - ``encode_batch_size``: batch size for computing the statistics online.
    """

    engine: EngineConfig
    autoencoder: PathOrName
    data: DataConfig
    latent_cache: ConfigPath | None = None
    latent_stats: ConfigPath | None = None
    latent_transform: LatentTransformConfig = field(default_factory=LatentTransformConfig)
    model: TransformerConfig = field(default_factory=TransformerConfig)
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    mean_flow: MeanFlowTrainConfig | None = None
    init_from: PathOrName | None = None
    optimizer: AdamWConfig = field(default_factory=AdamWConfig)
    ema_decay: float = 0.9999
    ema_warmup: bool = True     # decay capped by (1 + n) / (10 + n): short runs get a usable average
    sampling: SamplingDefaults | None = None  # set in __post_init__ when None
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    encode_batch_size: int = 256

    def __post_init__(self) -> None:
        check_number("ema_decay", self.ema_decay, at_least=0, below=1)
        check_int("encode_batch_size", self.encode_batch_size, at_least=1)
        if self.mean_flow is not None and self.mean_flow.distill and self.init_from is None:
            raise ValueError("mean_flow.distill takes its teacher from init_from: set init_from to a trained pipeline")
        if self.init_from is not None and (self.latent_stats is not None or self.latent_transform.path is not None):
            raise ValueError("init_from brings its own latent transform: "
                             "leave latent_stats and latent_transform.path unset")
        if self.sampling is None:
            self.sampling = SamplingDefaults() if self.mean_flow is None else mean_flow_sampling(self.mean_flow)
        mean_flow = self.mean_flow
        if mean_flow is not None and mean_flow.grid_fraction > 0 and mean_flow.grid_shift != self.sampling.shift:
            raise ValueError(f"mean_flow.grid_shift {mean_flow.grid_shift} is not sampling.shift {self.sampling.shift}:"
                             " the grid's intervals are meant to be those the run's sampler steps over")


# ---------------------------------------------------------------------------------------------------------
# Data: latents of a training batch, online or cached
# ---------------------------------------------------------------------------------------------------------


def dataset_info(data: DataConfig) -> dict:
    """What a latent cache records about its images: the data config (flips aside) and the split."""
    return {"data": to_dict(dataclasses.replace(data, hflip=False)), "split": "train"}


def hflip_choices(generator: torch.Generator, batch: int, global_batch_size: int, offset: int) -> torch.Tensor:
    """bool [batch]: the samples ``random_hflip`` mirrors with this generator (it is run on [0, 1] rows)."""
    rows = torch.tensor([0.0, 1.0], device=generator.device).expand(batch, 1, 2)
    return random_hflip(rows, generator, global_batch_size, offset)[:, 0, 0] == 1.0


def batch_latents(batch: Any, autoencoder: Autoencoder | None, hflip: bool, generator: torch.Generator,
                  global_batch_size: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's raw latents and labels of a training batch.

    Online (``autoencoder`` given): ``batch`` is (images, labels); with ``hflip`` the images the coins pick
    are mirrored, then everything is encoded. Cached (``autoencoder`` None): ``batch`` is (latents,
    [flipped,] labels) from :class:`LatentCacheDataset`; with ``hflip`` the same coins pick the mirrors'
    latents. Both give the same numbers (the cache stores float32 encodings of the same images).
    """
    if autoencoder is not None:
        images, labels = batch
        if hflip:
            images = random_hflip(images, generator, global_batch_size, offset)
        return encode_latents(autoencoder, images), labels
    latents, *mirrors, labels = batch
    if hflip:
        flip = hflip_choices(generator, len(labels), global_batch_size, offset).to(latents.device)
        latents = torch.where(flip.view(-1, 1, 1, 1), mirrors[0], latents)
    return latents, labels


def training_dataset(config: DiffusionTrainConfig, autoencoder: Autoencoder, progress: bool = True) -> Dataset:
    """The latent cache (checked against the config and the autoencoder) or the image dataset."""
    if config.latent_cache is None:
        return build_dataset(config.data, "train", progress=progress)
    cache = LatentCacheDataset(config.latent_cache)
    where = f"latent cache {config.latent_cache}"
    if cache.index["autoencoder"] != autoencoder_fingerprint(autoencoder):
        raise SVGError(f"{where} was made with another autoencoder than {config.autoencoder}: run cache-latents again")
    if cache.index["dataset"] != dataset_info(config.data):
        raise SVGError(f"{where} was made from other data ({cache.index['dataset']}) than the config's "
                       f"({dataset_info(config.data)}): run cache-latents again")
    if config.data.hflip and not cache.flips:
        raise SVGError(f"{where} has no mirrored latents but data.hflip is true: cache with flips or set hflip false")
    return cache


def dataset_classes(dataset: Dataset) -> list[str]:
    """The class names of a dataset (an unlabelled image folder has none: the model is unconditional)."""
    return list(getattr(dataset, "classes", None) or [])


def training_transform(config: DiffusionTrainConfig, autoencoder: Autoencoder, dataset: Dataset, resume: bool,
                       progress: bool = True) -> LatentTransform:
    """The latent transform of a run: a resumed run's own, ``latent_transform.path``, or fitted (see the module docstring).

    Every rank must call it (a fit is sharded over ranks).
    """
    settings = config.latent_transform
    if settings.kind == "per_channel":
        return training_statistics(config, autoencoder, dataset, resume, progress)
    own = Path(config.engine.out_dir) / TRANSFORM_FOLDER
    source = own if resume and own.is_dir() else settings.path
    if source is not None:
        return check_transform(load_latent_transform(source), settings, autoencoder.latent_channels, str(source))
    if isinstance(dataset, LatentCacheDataset):
        batches = dataset.latent_batches(*rank_and_world_size())
    else:
        batches = encoded_batches(autoencoder, dataset, config.encode_batch_size, config.engine.num_workers, progress,
                                  desc="fitting the latent transform")
    device = next(autoencoder.parameters()).device
    return fit_latent_transform(settings, batches, autoencoder.latent_channels, device)


def training_statistics(config: DiffusionTrainConfig, autoencoder: Autoencoder, dataset: Dataset,
                        resume: bool, progress: bool = True) -> LatentStatistics:
    """The latent statistics of a run: a resumed run's own file, ``config.latent_stats``, the cache's, or computed."""
    own = Path(config.engine.out_dir) / STATS_FILE
    if resume and own.is_file():
        return LatentStatistics.load(own)
    if config.latent_stats is not None:
        stats = LatentStatistics.load(config.latent_stats)
    elif isinstance(dataset, LatentCacheDataset):
        stats = dataset.statistics()
    else:
        stats = compute_latent_statistics(autoencoder, dataset, config.encode_batch_size, config.engine.num_workers,
                                          progress=progress)
    if stats.channels != autoencoder.latent_channels:
        raise SVGError(f"the latent statistics have {stats.channels} channels, the autoencoder's latent "
                       f"{autoencoder.latent_channels}")
    return stats


def preview_classes(preview: PreviewConfig, class_names: list[str]) -> list[int] | None:
    """The classes of the preview grid's rows (None for an unconditional model: one row of the null class)."""
    if not class_names:
        return None
    if preview.classes is None:
        return list(range(min(len(class_names), 10)))
    wrong = [c for c in preview.classes if not 0 <= c < len(class_names)]
    if wrong:
        raise SVGError(f"preview.classes: class {wrong[0]} does not exist (the data has {len(class_names)} classes)")
    return list(preview.classes)


def checkpoint_transform(trainer_state: dict) -> LatentTransform:
    """The latent transform a diffusion checkpoint's trainer state holds."""
    if "latent_stats" in trainer_state:  # checkpoints written before latent transforms existed
        return LatentStatistics(trainer_state["latent_stats"]["mean"], trainer_state["latent_stats"]["std"])
    return transform_from_state(trainer_state["latent_transform"])


def transformer_config(config: DiffusionTrainConfig, latent_size: int, channels: int, num_classes: int) -> DiTConfig:
    """The DiT a run trains: ``config.model`` on ``channels`` x ``latent_size``^2 latents (those the latent
    transform gives), with MeanFlow's extra inputs when the run has a ``mean_flow`` section."""
    dit_config = config.model.build(channels, latent_size, num_classes)
    return dit_config if config.mean_flow is None else mean_flow_transformer(dit_config, config.mean_flow)


def warn_if_token_exceeds_width(config: DiTConfig) -> None:
    """Warn when a patch token carries more numbers than the transformer's width (RAE: width >= token dimension).

    The input projection then squeezes the token, and velocity prediction of a token the network cannot
    represent fails (JiT); a smaller patch, a wider model or a PCA latent transform avoids it.
    """
    token = config.patch_size**2 * config.in_channels
    if token > config.hidden_size:
        warnings.warn(f"the DiT's patch tokens hold {token} numbers ({config.patch_size}x{config.patch_size} patch x "
                      f"{config.in_channels} channels) but its width is {config.hidden_size}: it will learn poorly. "
                      "Use a smaller patch, a wider model, or a PCA latent transform (latent_transform.kind: pca)",
                      stacklevel=2)


# ---------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------


def flow_matching_step(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, flow: FlowMatchingConfig) -> None:
    """Backpropagate the flow-matching loss of this rank's latents ``x`` and labels ``y``, micro-batch by micro-batch
    (noise, times and label drops drawn for the GLOBAL batch from the step's ``flow`` generator)."""
    inputs = draw_flow_inputs((ctx.global_batch_size, *x.shape[1:]), flow, ctx.generator("flow"),
                              ctx.device).rows(ctx.batch_offset, ctx.batch_offset + ctx.local_batch_size)
    for x_i, y_i, noise, t, drop in ctx.micro_batches(x, y, inputs.noise, inputs.t, inputs.drop):
        loss = flow_matching_loss(ctx.modules["transformer"], x_i, y_i, noise, t, drop)
        ctx.backward(loss)
        ctx.log(loss=loss)



class DiffusionTrainer(Trainer):
    """Flow matching (or MeanFlow) of a DiT on transformed latents, with EMA and preview grids (module docstring).

    ``start``: the pipeline of ``config.init_from``, checked (:func:`.warm_start.load_start_pipeline`).
    """

    def __init__(self, config: DiffusionTrainConfig, autoencoder: Autoencoder, transform: LatentTransform,
                 class_names: list[str], cached: bool, device: torch.device, start: SVGPipeline | None = None):
        self.config = config
        self.autoencoder = autoencoder.to(device).eval()
        self.transform = transform
        self.class_names = class_names
        self.cached = cached
        self.preview_classes = preview_classes(config.preview, class_names)
        size = autoencoder.latent_size
        self.flow = config.flow.resolved(size * size, transform.channels)
        dit_config = transformer_config(config, size, transform.channels, len(class_names))
        warn_if_token_exceeds_width(dit_config)
        check_sampling_defaults(dit_config, config.sampling)  # before training, not after
        # Seeded on its own, so the initialization does not depend on what ran before (loading, statistics).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(config.engine.seed, "transformer"))
            initial = DiT(dit_config) if start is None else start_transformer(start.transformer, dit_config,
                                                                                  config.init_from)
            self.transformer = initial.to(device)
        distill = config.mean_flow is not None and config.mean_flow.distill
        self.teacher = start.transformer.to(device).eval().requires_grad_(False) if distill else None
        self.teacher_digest = weights_digest(config.init_from) if distill else None
        opt = config.optimizer
        # fused: one kernel over all parameters (CPU and CUDA, the engine's devices); DiT-S's step takes 0.17 s
        # instead of 0.81 s with the default for-loop on 2 CPU cores (benchmarks/speed.py, docs/results.md).
        self.optimizer = torch.optim.AdamW(self.transformer.parameters(), lr=opt.lr, betas=opt.betas,
                                           weight_decay=opt.weight_decay, fused=True)
        self.ema = EMA(self.transformer, config.ema_decay, warmup=config.ema_warmup)
        self.ema_transformer = DiT(dit_config).to(device).eval().requires_grad_(False)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.transformer}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"transformer": self.optimizer}

    def training_step(self, batch, ctx: StepContext) -> None:
        latents, labels = batch_latents(batch, None if self.cached else self.autoencoder, self.config.data.hflip,
                                        ctx.generator("hflip"), ctx.global_batch_size, ctx.batch_offset)
        x = self.transform.encode(latents)
        y = labels if self.class_names else torch.zeros_like(labels)  # unconditional: the null class 0
        if self.config.mean_flow is None:
            flow_matching_step(ctx, x, y, self.flow)
        else:
            mean_flow_step(ctx, x, y, self.flow, self.config.mean_flow, self.teacher)
        ctx.optimizer_step(self.optimizer)
        self.ema.update(self.transformer)

    def state_dict(self) -> dict:
        state = {"ema": self.ema.state_dict(), "latent_transform": transform_state(self.transform),
                 "class_names": list(self.class_names)}  # so that `export` needs no dataset
        if self.teacher_digest is not None:
            state["teacher_sha256"] = self.teacher_digest
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("teacher_sha256") != self.teacher_digest:
            raise SVGError(f"init_from {self.config.init_from}: the teacher's weights are not those the checkpoint "
                           "was trained with (they changed, or distill changed): resume with the original teacher")
        if state.get("class_names", self.class_names) != self.class_names:
            raise SVGError(f"the checkpoint was trained on the classes {state['class_names']}, the data has "
                           f"{self.class_names}: resume on the same data")
        self.ema.load_state_dict(state["ema"])
        self.transform = checkpoint_transform(state)

    def ema_pipeline(self) -> SVGPipeline:
        """The pipeline of the EMA transformer as it is now."""
        self.ema.copy_to(self.ema_transformer)
        return SVGPipeline(self.autoencoder, self.ema_transformer, self.transform, self.class_names or None,
                           self.config.sampling)

    @torch.no_grad()
    def on_sample(self, ctx: StepContext) -> None:
        """A class grid from the EMA transformer; every rank samples its share (the EMA is the same on all)."""
        preview, mean_flow = self.config.preview, self.config.mean_flow
        pipe = self.ema_pipeline()
        labels = class_labels(pipe, self.preview_classes, preview.per_class)
        sampler = None if mean_flow is None else MEAN_FLOW_SAMPLER
        guidance = preview.guidance_scale if mean_flow is None else sampling_guidance(mean_flow, preview.guidance_scale)
        write_samples(pipe, labels, grid=ctx.out_dir / SAMPLES_FOLDER / f"step_{ctx.step:08d}.png",
                      nrow=preview.per_class, seed=preview.seed, batch_size=len(labels), progress=False,
                      sampler=sampler, guidance_scale=guidance, num_steps=preview.num_steps,
                      precision=ctx.config.precision)


def build_trainer(config: DiffusionTrainConfig, engine: Engine, resume: bool) -> tuple[DiffusionTrainer, Dataset]:
    """What a run needs before its first step: the trainer (its transformer initialized or warm-started from
    ``init_from``) and the training dataset; rank 0 writes the config and the latent transform to ``out_dir``."""
    out_dir = Path(config.engine.out_dir)
    autoencoder = load_autoencoder(config.autoencoder).to(engine.device)
    dataset = training_dataset(config, autoencoder, progress=engine.is_main)
    class_names = dataset_classes(dataset)
    preview_classes(config.preview, class_names)  # a wrong class fails before the statistics
    start = None if config.init_from is None else load_start_pipeline(config.init_from, autoencoder, class_names)
    if start is None:
        transform = training_transform(config, autoencoder, dataset, resume, progress=engine.is_main)
    else:  # a resumed run's checkpoint holds the same one
        transform = start_transform(start, config.latent_transform, config.init_from)
    if engine.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
        if isinstance(transform, LatentStatistics):
            transform.save(out_dir / STATS_FILE)
        else:
            transform.save(out_dir / TRANSFORM_FOLDER)
    trainer = DiffusionTrainer(config, autoencoder, transform, class_names,
                               cached=isinstance(dataset, LatentCacheDataset), device=engine.device, start=start)
    return trainer, dataset


def _encoding_setup(config: DiffusionTrainConfig, progress: bool, from_cache: bool):
    """(place, autoencoder on its device, dataset) of the commands that encode the training split: the images, or
    with ``from_cache`` the latent cache when the config names one (checked against the autoencoder)."""
    place = setup_distributed(config.engine.device)
    autoencoder = load_autoencoder(config.autoencoder).to(place.device)
    show = progress and place.is_main
    dataset = (training_dataset(config, autoencoder, progress=show) if from_cache
               else build_dataset(config.data, "train", progress=show))
    return place, autoencoder, dataset


# ---------------------------------------------------------------------------------------------------------
# Entry points (one per command)
# ---------------------------------------------------------------------------------------------------------


def train_diffusion(config: DiffusionTrainConfig, resume: bool = False) -> Path:
    """Train as ``config`` says (continuing from the latest checkpoint with ``resume``); return the pipeline folder.

    Runs as one process, or as one of N under torchrun (every rank returns after rank 0 has written it).
    """
    engine = Engine(config.engine)
    trainer, dataset = build_trainer(config, engine, resume)
    engine.fit(trainer, dataset, resume=resume)
    folder = Path(config.engine.out_dir) / PIPELINE_FOLDER
    if engine.is_main:
        trainer.ema_pipeline().save_pretrained(folder)
    barrier()
    return folder


def cache_training_latents(config: DiffusionTrainConfig, out_dir: str | Path | None = None, dtype: str = "float32",
                           shard_size: int = 4096, progress: bool = True) -> Path:
    """The ``cache-latents`` command: encode ``config.data``'s training split with ``config.autoencoder`` into
    ``out_dir`` (default ``config.latent_cache``), with the mirrors' latents when ``data.hflip``. Shards are
    split over ranks under torchrun."""
    target = out_dir if out_dir is not None else config.latent_cache
    if target is None:
        raise SVGError("no cache folder: set latent_cache in the config or pass an output folder")
    place, autoencoder, dataset = _encoding_setup(config, progress, from_cache=False)
    return cache_latents(autoencoder, dataset, target, flips=config.data.hflip, shard_size=shard_size, dtype=dtype,
                         batch_size=config.encode_batch_size, num_workers=config.engine.num_workers,
                         dataset_info=dataset_info(config.data), progress=progress)


def training_latent_statistics(config: DiffusionTrainConfig, out: str | Path, progress: bool = True) -> Path:
    """The ``latent-stats`` command: exact statistics of ``config.data``'s training latents, written to ``out``
    (set ``latent_stats`` to it to skip the computation when training online). Sharded under torchrun."""
    place, autoencoder, dataset = _encoding_setup(config, progress, from_cache=False)
    stats = compute_latent_statistics(autoencoder, dataset, config.encode_batch_size, config.engine.num_workers,
                                      progress=progress)
    if place.is_main:
        stats.save(out)
    barrier()
    return Path(out)


def fit_training_transform(config: DiffusionTrainConfig, out: str | Path | None = None, progress: bool = True) -> Path:
    """The ``fit-latent-transform`` command: fit ``config.latent_transform`` over the training latents (the
    cache's, streamed, or ``config.data`` encoded) and write it to ``out`` (default ``latent_transform.path``),
    which ``latent_transform.path`` then names. Sharded over ranks under torchrun."""
    target = out if out is not None else config.latent_transform.path
    if target is None:
        raise SVGError("no output folder: pass one or set latent_transform.path in the config")
    settings = dataclasses.replace(config.latent_transform, path=None)
    place, autoencoder, dataset = _encoding_setup(config, progress, from_cache=True)
    fitting = dataclasses.replace(config, latent_transform=settings, latent_stats=None)
    transform = training_transform(fitting, autoencoder, dataset, resume=False, progress=progress and place.is_main)
    if place.is_main:
        save_latent_transform(transform, target)
    barrier()
    return Path(target)
