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
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import save_config
from ..data import DataConfig, build_dataset
from ..encoders.configs import ENCODER_CONFIGS, ViTConfig, get_config
from ..encoders.frozen import save_encoder
from ..encoders.vit import VisionTransformer
from ..errors import SVGError
from ..training import EMA, Engine, EngineConfig, StepContext, Trainer, load_checkpoint

# ------------------------------------------------------------------------------------------------ config


@dataclass
class MultiCropConfig:
    """DINO's multi-crop augmentation, on batches of tensors (sizes in pixels, scales as area fractions).

    Each view is a random resized crop (aspect ratio in [3/4, 4/3]), optionally flipped (``data.hflip``),
    colour-jittered (brightness, contrast, saturation; with ``jitter_probability``), made grey
    (``grayscale_probability``), Gaussian-blurred (per view: first global crop, second global crop, local
    crops) and, for the second global crop only, solarized.
    """

    global_crop_size: int = 32
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = 6
    local_crop_size: int = 16
    local_crop_scale: tuple[float, float] = (0.1, 0.4)
    jitter_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    grayscale_probability: float = 0.2
    blur_probability: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_probability: float = 0.2

    def __post_init__(self) -> None:
        for name in ("global_crop_scale", "local_crop_scale", "blur_sigma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {getattr(self, name)}")
        for name in ("global_crop_scale", "local_crop_scale"):
            if getattr(self, name)[1] > 1:
                raise ValueError(f"{name} is a fraction of the image area: at most 1, got {getattr(self, name)}")
        if self.global_crop_size < 1 or self.local_crop_size < 1 or self.local_crops < 0:
            raise ValueError("crop sizes must be positive and local_crops non-negative")
        probabilities = (self.jitter_probability, self.grayscale_probability, self.solarize_probability,
                         *self.blur_probability)
        if not all(0 <= p <= 1 for p in probabilities):
            raise ValueError("probabilities must lie in [0, 1]")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise ValueError("brightness, contrast and saturation strengths must be non-negative")

    @property
    def num_views(self) -> int:
        return 2 + self.local_crops


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
    export_dir: str | None = None
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
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr", "student_temp", "warmup_teacher_temp", "teacher_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("teacher_momentum", "center_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "weight_decay_end", "ibot_weight", "koleo_weight", "freeze_prototypes_steps",
                     "teacher_temp_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0 <= self.mask_probability <= 1:
            raise ValueError(f"mask_probability must be in [0, 1], got {self.mask_probability}")
        if not 0 <= self.mask_ratio[0] <= self.mask_ratio[1] <= 1:
            raise ValueError(f"mask_ratio must be (low, high) with 0 <= low <= high <= 1, got {self.mask_ratio}")

    def vit_config(self) -> ViTConfig:
        """The trained ViT's architecture, with the training attention implementation."""
        return dataclasses.replace(get_config(self.encoder), attn_impl=self.attn_impl)

    @property
    def export_path(self) -> Path:
        return Path(self.export_dir) if self.export_dir else Path(self.engine.out_dir) / "encoder"


# ------------------------------------------------------------------------------------ multi-crop augmentation

# Uniform numbers each view consumes per image, in this order (see `MultiCrop.view`).
VIEW_DRAWS = ("area", "aspect", "center_x", "center_y", "flip", "jitter", "brightness", "contrast", "saturation",
              "grayscale", "blur", "sigma", "solarize")
BLUR_RADIUS = 3  # kernel of 7 taps: enough for sigma <= ~2 pixels
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


class MultiCrop:
    """Views of a batch [B, 3, S, S] in [-1, 1] from uniform numbers [B, num_views, len(VIEW_DRAWS)].

    All randomness comes in as those numbers (drawn by the trainer from the step's generator for the
    global batch), so a view is a pure function of (image, numbers): reproducible and independent of how
    many processes share the batch. Returns (global crops [2B, ...] view-major, local crops [L*B, ...] or None).
    """

    def __init__(self, cfg: MultiCropConfig, hflip: bool):
        self.cfg = cfg
        self.hflip = hflip

    def __call__(self, images: Tensor, draws: Tensor) -> tuple[Tensor, Tensor | None]:
        cfg = self.cfg
        views = [
            self.view(images, draws[:, i], cfg.global_crop_size, cfg.global_crop_scale, cfg.blur_probability[i],
                      cfg.solarize_probability if i == 1 else 0.0)
            for i in range(2)
        ]
        views += [
            self.view(images, draws[:, i], cfg.local_crop_size, cfg.local_crop_scale, cfg.blur_probability[2], 0.0)
            for i in range(2, cfg.num_views)
        ]
        local = torch.cat(views[2:]) if cfg.local_crops else None
        return torch.cat(views[:2]), local

    def view(self, images: Tensor, draws: Tensor, size: int, scale: tuple[float, float], blur_probability: float,
             solarize_probability: float) -> Tensor:
        u = dict(zip(VIEW_DRAWS, draws.float().unbind(1)))
        x = self.resized_crop(images.float(), u, size, scale)
        x = (x + 1) / 2  # colour operations work on [0, 1], as torchvision's
        cfg = self.cfg
        x = _where(u["jitter"] < cfg.jitter_probability, self.jitter(x, u), x)
        x = _where(u["grayscale"] < cfg.grayscale_probability, _gray(x).expand_as(x), x)
        sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u["sigma"]
        x = _where(u["blur"] < blur_probability, gaussian_blur(x, sigma), x)
        x = _where(u["solarize"] < solarize_probability, torch.where(x >= 0.5, 1 - x, x), x)
        return x * 2 - 1

    def resized_crop(self, images: Tensor, u: dict[str, Tensor], size: int, scale: tuple[float, float]) -> Tensor:
        """torchvision's RandomResizedCrop, batched: area fraction in ``scale``, log-uniform aspect in [3/4, 4/3].

        Where torchvision retries a crop that does not fit, the sides are clipped to the image instead.
        The crop is sampled bilinearly through an affine grid, which also carries the horizontal flip.
        """
        area = scale[0] + (scale[1] - scale[0]) * u["area"]
        aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u["aspect"])
        width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
        # Crop centre in [-1, 1] coordinates, keeping the crop inside the image.
        center_x = (1 - width) * (2 * u["center_x"] - 1)
        center_y = (1 - height) * (2 * u["center_y"] - 1)
        flip = torch.where(u["flip"] < 0.5, -1.0, 1.0) if self.hflip else torch.ones_like(width)
        zero = torch.zeros_like(width)
        theta = torch.stack([
            torch.stack([width * flip, zero, center_x], dim=1),
            torch.stack([zero, height, center_y], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def jitter(self, x: Tensor, u: dict[str, Tensor]) -> Tensor:
        """Brightness, contrast and saturation factors in [1 - s, 1 + s], applied in that order (clamped)."""
        cfg = self.cfg

        def factor(strength: float, draw: Tensor) -> Tensor:
            return (1 + strength * (2 * draw - 1)).view(-1, 1, 1, 1)

        x = (x * factor(cfg.brightness, u["brightness"])).clamp(0, 1)
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factor(cfg.contrast, u["contrast"]) + mean).clamp(0, 1)
        gray = _gray(x)
        return ((x - gray) * factor(cfg.saturation, u["saturation"]) + gray).clamp(0, 1)


def _gray(x: Tensor) -> Tensor:
    return (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _where(condition: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(condition.view(-1, 1, 1, 1), a, b)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image [B, C, H, W] with its own sigma [B] (separable 7-tap kernel, reflected borders)."""
    batch, channels, height, width = x.shape
    taps = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, dim=0)  # [B*C, 7]
    planes = F.pad(x.reshape(1, batch * channels, height, width), [BLUR_RADIUS] * 4, mode="reflect")
    planes = F.conv2d(planes, kernel.view(-1, 1, 1, 2 * BLUR_RADIUS + 1), groups=batch * channels)
    planes = F.conv2d(planes, kernel.view(-1, 1, 2 * BLUR_RADIUS + 1, 1), groups=batch * channels)
    return planes.view(batch, channels, height, width)


def blob_masks(draws: Tensor, grid: int, probability: float, ratio: tuple[float, float]) -> Tensor:
    """iBOT masks [B, grid*grid] (True = masked) from uniform numbers [B, 2 + grid*grid].

    An image is masked with ``probability`` (draw 0), a fraction in ``ratio`` of its patches (draw 1).
    Which patches: the highest of the remaining random scores after a 3x3 box blur, so masks form blobs
    (like iBOT's block masks) rather than isolated patches that neighbours would give away.
    """
    batch = draws.shape[0]
    selected = draws[:, 0] < probability
    fraction = ratio[0] + (ratio[1] - ratio[0]) * draws[:, 1]
    count = torch.where(selected, (fraction * grid * grid).round(), torch.zeros_like(fraction))
    scores = F.avg_pool2d(draws[:, 2:].reshape(batch, 1, grid, grid), 3, stride=1, padding=1,
                          count_include_pad=False).flatten(1)
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return rank < count[:, None]


# ---------------------------------------------------------------------------------------------- the model


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(nn.Module):
    """BatchNorm over rows [M, D] of ALL processes (statistics all-reduced with gradients), batch stats only.

    Ranks may hold different numbers of rows (masked patches), so sums and counts are reduced, not means:
    one process computes what N processes compute together. The variance is the mean squared deviation
    from the global mean (two reductions): E[x^2] - E[x]^2 would cancel catastrophically at initialization,
    when all images give nearly the same class token. No running statistics: the head that uses it is
    thrown away after pretraining.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        sums = _all_reduce_sum(torch.cat([x32.sum(0), x32.new_full((1,), x.shape[0])]))
        count = sums[-1].clamp(min=1)
        centred = x32 - sums[:-1] / count
        variance = _all_reduce_sum(centred.pow(2).sum(0)) / count
        return (centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias).to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """y = sum over processes of x; every process's loss depends on y, so dx = sum over processes of dy."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class _AllGatherRows(torch.autograd.Function):
    """Every process's rows (equal counts), concatenated in rank order; the gradient of a process's own
    rows is the sum of the gradients every process sends them (one all-reduce: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:
        gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows.contiguous())
        ctx.rows = rows.shape[0]
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = dist.get_rank() * ctx.rows
        return total[start : start + ctx.rows]


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum over processes, with gradients flowing back to every process."""
    return _AllReduceSum.apply(tensor) if _world_size() > 1 else tensor


class ProjectionHead(nn.Module):
    """DINO's head: MLP to a bottleneck, L2 normalization, cosine logits against K learned prototypes.

    The prototypes are normalized in the forward pass (DINO's weight-normalized last layer with its norm
    fixed to 1), and the logits are computed in float32: divided by a teacher temperature of 0.04, bf16
    rounding would be amplified 25 times.
    """

    def __init__(self, in_dim: int, prototypes: int, hidden_dim: int, bottleneck_dim: int, layers: int,
                 batchnorm: bool):
        super().__init__()
        widths = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mlp: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            hidden = i < layers - 1
            mlp.append(nn.Linear(width_in, width_out, bias=not (hidden and batchnorm)))  # BatchNorm removes a bias
            if hidden:
                mlp += [GlobalBatchNorm(width_out), nn.GELU()] if batchnorm else [nn.GELU()]
        self.mlp = nn.Sequential(*mlp)
        self.prototypes = nn.Parameter(torch.empty(prototypes, bottleneck_dim))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(z.float(), dim=-1) @ F.normalize(self.prototypes.float(), dim=-1).T


class DistillationModel(nn.Module):
    """Backbone + head; the student and the teacher are two of these.

    ``forward(global_crops, masks, local_crops=None, mask_input=True)`` returns ``cls_logits`` for the
    global then local crops, ``patch_logits`` for the patches where ``masks`` is True (the student sees
    those patches replaced by the mask token when ``mask_input``; the teacher sees the image), and the
    global crops' ``cls_tokens`` (for KoLeo).
    """

    def __init__(self, vit_config: ViTConfig, cfg: PretrainEncoderConfig):
        super().__init__()
        self.backbone = VisionTransformer(vit_config)
        self.head = ProjectionHead(vit_config.embed_dim, cfg.head_prototypes, cfg.head_hidden_dim,
                                   cfg.head_bottleneck_dim, cfg.head_layers, cfg.head_batchnorm)

    def forward(self, global_crops: Tensor, masks: Tensor, local_crops: Tensor | None = None,
                mask_input: bool = True) -> dict[str, Tensor]:
        out = self.backbone(global_crops, masks=masks if mask_input else None)
        cls = out["x_norm_clstoken"]
        if local_crops is not None:
            cls = torch.cat([cls, self.backbone(local_crops)["x_norm_clstoken"]])
        return {
            "cls_logits": self.head(cls),
            "patch_logits": self.head(out["x_norm_patchtokens"][masks]),
            "cls_tokens": out["x_norm_clstoken"],
        }


# --------------------------------------------------------------------------------------------------- losses


def dino_loss(student_logits: Tensor, teacher_probs: Tensor, student_temp: float) -> Tensor:
    """Cross-entropy from each teacher global view to every student view but the same one, averaged.

    student_logits [V*B, K] (view-major, globals first), teacher_probs [2*B, K]; mean over images.
    """
    batch = teacher_probs.shape[0] // 2
    student = F.log_softmax(student_logits.float() / student_temp, dim=-1).split(batch)
    teacher = teacher_probs.split(batch)
    terms = [-(t * s).sum(-1).mean() for i, t in enumerate(teacher) for j, s in enumerate(student) if i != j]
    return torch.stack(terms).mean()


def ibot_loss(student_logits: Tensor, teacher_probs: Tensor, masks: Tensor, student_temp: float) -> Tensor:
    """Cross-entropy on masked patches: averaged within each image, then over ALL global-crop images.

    Images without masked patches count as zero (iBOT/DINOv2's normalization): a per-image mean over the
    micro-batch, as the engine's accumulation rule needs.
    """
    per_patch = -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)
    weights = (1.0 / masks.sum(1).clamp(min=1)).unsqueeze(1).expand_as(masks)[masks]
    return (per_patch * weights).sum() / masks.shape[0]


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo (DINOv2): -mean log distance of each L2-normalized vector to its nearest neighbour.

    Neighbours are searched among the vectors of every process (gathered with gradients), so the loss is
    that of the global batch.
    """
    x = F.normalize(features.float(), dim=-1)
    world = _world_size()
    everyone = _AllGatherRows.apply(x) if world > 1 else x
    own = torch.arange(len(x), device=x.device) + (dist.get_rank() * len(x) if world > 1 else 0)
    with torch.no_grad():
        similarity = x @ everyone.T
        similarity[torch.arange(len(x)), own] = -2.0  # never your own neighbour
        nearest = similarity.argmax(dim=1)
    distance = (x - everyone[nearest]).norm(dim=1)
    return -torch.log(distance + eps).mean()


def cosine(step: int, max_steps: int, start: float, end: float) -> float:
    """A value going from ``start`` (step 0) to ``end`` (``max_steps``) on a half cosine (DINO's schedules)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, max_steps))))


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


# -------------------------------------------------------------------------------------------------- trainer


class DistillationTrainer(Trainer):
    """Student (trained), teacher (EMA of the student) and the centres; see the module docstring."""

    def __init__(self, cfg: PretrainEncoderConfig, device: torch.device):
        self.cfg = cfg
        self.vit_config = cfg.vit_config()
        self.student = DistillationModel(self.vit_config, cfg).to(device)
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
            stats["entropy"] += _entropy(teacher_cls).mean() / log_k * per_micro_batch
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
        image_entropy, batch_entropy = stats["entropy"].item(), (_entropy(stats["probs"]) / log_k).item()
        ctx.log(teacher_entropy=image_entropy, teacher_batch_entropy=batch_entropy, teacher_temp=temperature,
                teacher_momentum=momentum)
        self._watch_collapse(ctx, image_entropy, batch_entropy)

    def _watch_collapse(self, ctx: StepContext, image_entropy: float, batch_entropy: float) -> None:
        """Warn (at log steps, after the temperature warmup) when the teacher's output ignores the image.

        Both collapses DINO can fall into make the batch-averaged distribution as sharp as each image's:
        one prototype for every image (both entropies near 0) or uniform outputs (both near log K).
        """
        done = ctx.step + 1
        if done % ctx.config.log_every or ctx.step < self.cfg.teacher_temp_warmup_steps or not ctx.is_main:
            return
        if batch_entropy - image_entropy < self.cfg.collapse_threshold:
            kind = "uniform outputs" if image_entropy > 0.5 else "one prototype for every image"
            warnings.warn(
                f"step {done}: the teacher may have collapsed ({kind}): its batch entropy {batch_entropy:.3f} "
                f"minus its per-image entropy {image_entropy:.3f} (fractions of log K) is below "
                f"collapse_threshold {self.cfg.collapse_threshold}", stacklevel=2)

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
