"""DINO's multi-crop augmentation on batches of tensors, driven by uniform numbers drawn outside.

Self-distillation (``svg_diffusion.trainers.encoder``) shows the teacher two global crops of each image and
the student those plus ``local_crops`` small ones. Every random choice a view makes comes in as uniform
numbers (``VIEW_DRAWS``), drawn by the trainer for the global batch from the step's generator, so a view is a
pure function of (image, numbers): reproducible, resumable and independent of how many processes share the
batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.checks import check_each, check_int, check_interval, check_number


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
        for name in ("global_crop_scale", "local_crop_scale"):  # fractions of the image area
            check_interval(name, getattr(self, name), above=0, at_most=1)
        check_interval("blur_sigma", self.blur_sigma, above=0)
        check_int("global_crop_size", self.global_crop_size, at_least=1)
        check_int("local_crop_size", self.local_crop_size, at_least=1)
        check_int("local_crops", self.local_crops, at_least=0)
        for name in ("jitter_probability", "grayscale_probability", "solarize_probability"):
            check_number(name, getattr(self, name), at_least=0, at_most=1)
        check_each(check_number, "blur_probability", self.blur_probability, at_least=0, at_most=1)
        for name in ("brightness", "contrast", "saturation"):
            check_number(name, getattr(self, name), at_least=0)

    @property
    def num_views(self) -> int:
        return 2 + self.local_crops


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
