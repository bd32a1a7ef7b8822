"""Self-supervised pretraining of our ViT: DINO self-distillation with iBOT masked-patch and KoLeo terms.

SVG needs a frozen self-supervised encoder; where no DINO weights exist (or the domain is one DINO never saw),
``pretrain_encoder(config)`` makes one. The recipe is DINO's, with the two DINOv2 additions that matter for
*patch* features (SVG's latent is the patch map, not the class token):

- a student ViT + projection head, and a teacher of the same shape that is only ever the exponential moving
  average of the student (momentum ``teacher_momentum`` -> 1 on a cosine);
- multi-crop: two global crops (seen by teacher and student) and ``local_crops`` small crops (student only);
  the student matches the teacher's class-token distribution across views (the DINO loss);
- iBOT: some global crops have blobs of patches replaced by the mask token in the student's input, and the
  student must predict the teacher's distribution for those patches from the unmasked view;
- KoLeo: a nearest-neighbour entropy term that spreads the student's class tokens over the sphere;
- the teacher's outputs are centred (running mean of its logits) and sharpened (temperature warmed up from
  ``warmup_teacher_temp`` to ``teacher_temp``), which together prevent collapse. Collapse is watched: the
  teacher's per-image and batch-averaged output entropies are logged, and their gap (how much the output
  depends on the image) is checked at every log line.

Rules of the training engine (docs/engine.md) kept here: every random draw (crops, flips, colour, blur,
solarization, masks) is made for the global batch from ``ctx`` and sliced to this rank; the projection
head's BatchNorm and KoLeo's nearest neighbours use the whole global batch (statistics and features are
all-reduced / all-gathered across ranks with gradients), and the centres are all-reduced means. So one
process computes what N processes compute with the same global batch (with ``grad_accum_steps`` 1: these
batch-level terms see one micro-batch at a time), and a resumed run continues exactly.

The pieces are ``svg_diffusion.encoders`` modules: ``multi_crop`` (the views), ``patch_masks`` (iBOT's masks),
``distillation_head`` (backbone + projection head), ``distillation_losses`` and ``collapse``; this module
holds the config, the schedules, the step and the commands.

At the end, the teacher's backbone is exported with ``save_encoder``: it loads with ``load_encoder`` and
plugs into the SVG autoencoder like any DINO encoder. See docs/pretraining.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigPath, save_config
from ..data import DataConfig, build_dataset
from ..encoders.collapse import collapse_warning, entropy
from ..encoders.configs import ENCODER_CONFIGS, ViTConfig, get_config
from ..encoders.distillation_head import DistillationModel
from ..encoders.distillation_losses import dino_loss, ibot_loss, koleo_loss
from ..encoders.frozen import save_encoder
from ..encoders.multi_crop import VIEW_DRAWS, MultiCrop, MultiCropConfig
from ..encoders.patch_masks import blob_masks
from ..encoders.vit import VisionTransformer
from ..errors import SVGError
from ..training import EMA, Engine, EngineConfig, StepContext, Trainer, load_checkpoint
from ..utils.checks import check_each, check_int, check_interval, check_number

# ------------------------------------------------------------------------------------------------ config


@dataclass
class PretrainEncoderConfig:
    """The ``pretrain-encoder`` config: engine, data, architecture, augmentation and the distillation recipe.

    Architecture: ``encoder`` names the ViT (``svg-diffusion encoders``); ``attn_impl`` is the attention
    used while training ("math" has a much faster backward on CPU; the exported encoder keeps the named
    config's). Head: ``head_layers`` linear layers (hidden width ``head_hidden_dim``, BatchNorm between
    them when ``head_batchnorm``) to a ``head_bottleneck_dim`` vector, L2-normalized, then cosine logits
    against ``head_prototypes`` prototypes. One head serves class and patch tokens.
    Losses: DINO + ``ibot_weight`` * iBOT + ``koleo_weight`` * KoLeo. iBOT masks a fraction in
    ``mask_ratio`` of the patches of a global crop with probability ``mask_probability``.
    Optimizer: AdamW with the engine's lr schedule, weight decay on matrices going from ``weight_decay``
    to ``weight_decay_end`` on a cosine; the prototypes stay frozen for ``freeze_prototypes_steps``.
    ``collapse_threshold``: warn when the teacher's batch entropy minus its per-image entropy (as fractions
    of log K) falls below it after the temperature warmup. ``export_dir``: where the teacher's backbone is
    saved at the end (default ``<out_dir>/encoder``).
    """

    engine: EngineConfig
    data: DataConfig
    encoder: str = "demo"
    attn_impl: Literal["sdpa", "math"] = "math"
    export_dir: ConfigPath | None = None
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    head_prototypes: int = 4096
    head_hidden_dim: int = 512
    head_bottleneck_dim: int = 128
    head_layers: int = 3
    head_batchnorm: bool = True
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    freeze_prototypes_steps: int = 0
    teacher_momentum: float = 0.996
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    teacher_temp_warmup_steps: int = 0
    center_momentum: float = 0.9
    ibot_weight: float = 1.0
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    koleo_weight: float = 0.1
    collapse_threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.encoder not in ENCODER_CONFIGS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODER_CONFIGS)}, got {self.encoder!r}")
        patch = ENCODER_CONFIGS[self.encoder].patch_size
        for name in ("global_crop_size", "local_crop_size"):
            if getattr(self.crops, name) % patch:
                raise ValueError(f"crops.{name} {getattr(self.crops, name)} is not a multiple of the patch size {patch}")
        for name in ("head_prototypes", "head_hidden_dim", "head_bottleneck_dim", "head_layers"):
            check_int(name, getattr(self, name), at_least=1)
        for name in ("lr", "student_temp", "warmup_teacher_temp", "teacher_temp"):
            check_number(name, getattr(self, name), above=0)
        check_each(check_number, "betas", self.betas, at_least=0, below=1)
        for name in ("teacher_momentum", "center_momentum"):
            check_number(name, getattr(self, name), at_least=0, below=1)
        for name in ("weight_decay", "weight_decay_end", "ibot_weight", "koleo_weight"):
            check_number(name, getattr(self, name), at_least=0)
        for name in ("freeze_prototypes_steps", "teacher_temp_warmup_steps"):
            check_int(name, getattr(self, name), at_least=0)
        check_number("mask_probability", self.mask_probability, at_least=0, at_most=1)
        check_interval("mask_ratio", self.mask_ratio, at_least=0, at_most=1)
        check_number("collapse_threshold", self.collapse_threshold, at_least=0, at_most=1)

    def vit_config(self) -> ViTConfig:
        """The trained ViT's architecture, with the training attention implementation."""
        return dataclasses.replace(get_config(self.encoder), attn_impl=self.attn_impl)

    @property
    def export_path(self) -> Path:
        return Path(self.export_dir) if self.export_dir else Path(self.engine.out_dir) / "encoder"


# -------------------------------------------------------------------------------------------------- trainer


def cosine(step: int, max_steps: int, start: float, end: float) -> float:
    """A value going from ``start`` (step 0) to ``end`` (``max_steps``) on a half cosine (DINO's schedules)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, max_steps))))


class DistillationTrainer(Trainer):
    """Student (trained), teacher (EMA of the student) and the centres; see the module docstring."""

    def __init__(self, cfg: PretrainEncoderConfig, device: torch.device):
        self.cfg = cfg
        self.vit_config = cfg.vit_config()
        self.student = DistillationModel(self.vit_config, cfg.head_prototypes, cfg.head_hidden_dim,
                                         cfg.head_bottleneck_dim, cfg.head_layers, cfg.head_batchnorm).to(device)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_ema = EMA(self.student, decay=cfg.teacher_momentum)
        self.crops = MultiCrop(cfg.crops, hflip=cfg.data.hflip)
        self.center = torch.zeros(cfg.head_prototypes, device=device)
        self.patch_center = torch.zeros(cfg.head_prototypes, device=device)
        decay, no_decay = [], []
        for param in self.student.parameters():
            (decay if param.ndim >= 2 else no_decay).append(param)  # DINO: no decay on biases and norms
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.betas,
        )

    def trainable_modules(self):
        return {"student": self.student}

    def optimizers(self):
        return {"student": self.optimizer}

    # -- schedules (functions of the step, so a resumed run follows them exactly)

    def teacher_temperature(self, step: int) -> float:
        cfg = self.cfg
        if step >= cfg.teacher_temp_warmup_steps:
            return cfg.teacher_temp
        progress = step / cfg.teacher_temp_warmup_steps
        return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * progress

    # -- one step

    def training_step(self, batch, ctx: StepContext) -> None:
        cfg, grid = self.cfg, self.cfg.crops.global_crop_size // self.vit_config.patch_size
        images, _ = batch
        view_draws = ctx.rand("views", cfg.crops.num_views, len(VIEW_DRAWS))
        mask_draws = ctx.rand("masks", 2, 2 + grid * grid)
        temperature = self.teacher_temperature(ctx.step)
        k, log_k = cfg.head_prototypes, math.log(cfg.head_prototypes)
        # This rank's teacher statistics, summed over micro-batches (means are divided by their number).
        stats = {name: torch.zeros(size, device=ctx.device) for name, size in
                 (("logits", k), ("probs", k), ("entropy", 1), ("patch_logits", k), ("patches", 1))}
        per_micro_batch = 1.0 / ctx.config.grad_accum_steps
        for x, draws, mask_draw in ctx.micro_batches(images, view_draws, mask_draws):
            global_crops, local_crops = self.crops(x, draws)
            masks = blob_masks(mask_draw.transpose(0, 1).flatten(0, 1), grid, cfg.mask_probability, cfg.mask_ratio)
            with torch.no_grad():
                teacher = self.teacher(global_crops, masks, mask_input=False)
                teacher_cls = F.softmax((teacher["cls_logits"] - self.center) / temperature, dim=-1)
                teacher_patch = F.softmax((teacher["patch_logits"] - self.patch_center) / temperature, dim=-1)
            student = ctx.modules["student"](global_crops, masks, local_crops)
            dino = dino_loss(student["cls_logits"], teacher_cls, cfg.student_temp)
            ibot = ibot_loss(student["patch_logits"], teacher_patch, masks, cfg.student_temp)
            koleo = torch.stack([koleo_loss(view) for view in student["cls_tokens"].chunk(2)]).mean()
            loss = dino + cfg.ibot_weight * ibot + cfg.koleo_weight * koleo
            ctx.backward(loss)
            ctx.log(loss=loss, dino_loss=dino, ibot_loss=ibot, koleo_loss=koleo)
            stats["logits"] += teacher["cls_logits"].mean(0) * per_micro_batch
            stats["probs"] += teacher_cls.mean(0) * per_micro_batch
            stats["entropy"] += entropy(teacher_cls).mean() / log_k * per_micro_batch
            stats["patch_logits"] += teacher["patch_logits"].sum(0)
            stats["patches"] += teacher["patch_logits"].shape[0]

        if ctx.step < cfg.freeze_prototypes_steps:  # DINO's first-epoch freeze of the last layer, for stability
            self.student.head.prototypes.grad = None
        self.optimizer.param_groups[0]["weight_decay"] = cosine(
            ctx.step, ctx.config.max_steps, cfg.weight_decay, cfg.weight_decay_end)
        ctx.optimizer_step(self.optimizer)
        momentum = cosine(ctx.step, ctx.config.max_steps, cfg.teacher_momentum, 1.0)
        self.teacher_ema.decay = momentum
        self.teacher_ema.update(self.student)
        self.teacher_ema.copy_to(self.teacher)

        # Global-batch means (every rank ends with identical centres), in one all-reduce.
        flat = ctx.all_reduce_mean(torch.cat(list(stats.values())))
        stats = dict(zip(stats, flat.split([value.numel() for value in stats.values()])))
        self.center.lerp_(stats["logits"], 1 - cfg.center_momentum)
        if stats["patches"] > 0:
            self.patch_center.lerp_(stats["patch_logits"] / stats["patches"], 1 - cfg.center_momentum)
        image_entropy, batch_entropy = stats["entropy"].item(), (entropy(stats["probs"]) / log_k).item()
        ctx.log(teacher_entropy=image_entropy, teacher_batch_entropy=batch_entropy, teacher_temp=temperature,
                teacher_momentum=momentum)
        self._watch_collapse(ctx, image_entropy, batch_entropy)

    def _watch_collapse(self, ctx: StepContext, image_entropy: float, batch_entropy: float) -> None:
        """Warn (at log steps, after the temperature warmup) when the teacher's output ignores the image."""
        done = ctx.step + 1
        if done % ctx.config.log_every or ctx.step < self.cfg.teacher_temp_warmup_steps or not ctx.is_main:
            return
        warning = collapse_warning(image_entropy, batch_entropy, self.cfg.collapse_threshold)
        if warning is not None:
            warnings.warn(f"step {done}: {warning}", stacklevel=2)

    # -- state

    def state_dict(self) -> dict:
        return {"teacher": self.teacher_ema.state_dict(), "center": self.center, "patch_center": self.patch_center,
                "encoder": self.cfg.encoder}

    def load_state_dict(self, state: dict) -> None:
        self.teacher_ema.load_state_dict(state["teacher"])
        self.teacher_ema.copy_to(self.teacher)
        self.center.copy_(state["center"])
        self.patch_center.copy_(state["patch_center"])

    def teacher_backbone(self) -> VisionTransformer:
        """The teacher's backbone as a plain ViT of the named architecture (what is exported)."""
        return _named_vit(self.cfg.encoder, self.teacher.backbone.state_dict())


def _named_vit(name: str, state: dict[str, Tensor]) -> VisionTransformer:
    """The named architecture (with its own attention implementation) holding ``state``."""
    vit = VisionTransformer(get_config(name))
    vit.load_state_dict(state)
    return vit


# ------------------------------------------------------------------------------------------------ commands


def pretrain_encoder(cfg: PretrainEncoderConfig, resume: bool = False) -> Path:
    """Train ``cfg`` (resuming from its latest checkpoint with ``resume``), export the teacher's backbone.

    Runs as one process or under torchrun. Returns the exported encoder folder (``load_encoder`` reads it).
    """
    engine = Engine(cfg.engine)
    trainer = DistillationTrainer(cfg, engine.device)
    dataset = build_dataset(cfg.data, "train")
    if engine.is_main:
        Path(cfg.engine.out_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.engine.out_dir) / "pretrain_encoder.yaml")
    engine.fit(trainer, dataset, resume=resume)
    if engine.is_main:
        save_encoder(trainer.teacher_backbone(), cfg.export_path)
        engine.print(f"exported the teacher's backbone to {cfg.export_path}")
    return cfg.export_path


def export_checkpoint(checkpoint: str | Path, folder: str | Path) -> Path:
    """Export the teacher backbone of a ``pretrain-encoder`` training checkpoint (e.g. to probe it mid-run)."""
    state = load_checkpoint(checkpoint)
    trainer_state = state.get("trainer", {})
    if "teacher" not in trainer_state or "encoder" not in trainer_state:
        raise SVGError(f"{checkpoint} is not a pretrain-encoder checkpoint (no teacher in its trainer state)")
    prefix = "backbone."
    shadow = trainer_state["teacher"]["shadow"]
    backbone = {name[len(prefix):]: value for name, value in shadow.items() if name.startswith(prefix)}
    return save_encoder(_named_vit(trainer_state["encoder"], backbone), folder)
