"""Images as the package sees them: float tensors in [-1, 1], shaped [N, C, H, W] with C = 3 (or 1).

This module converts them to and from uint8 pixels, PIL images and PNG grids, and turns feature maps into
pictures (``pca_rgb``). ``from_uint8`` and ``to_uint8`` are exact inverses on uint8 values:
``x = u / 127.5 - 1`` and ``u = round((x + 1) * 127.5)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..errors import SVGError
from .files import atomic_path

GRID_BACKGROUND = 255  # white padding between grid cells and behind row labels
LABEL_COLOR = 0


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) as float32 in [-1, 1]."""
    return pixels.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], [N, C, H, W] or [C, H, W], as uint8 numpy [N, H, W, C] or [H, W, C] (clipped to range)."""
    if images.dim() not in (3, 4) or images.shape[-3] not in (1, 3):
        raise SVGError(f"expected images [N, C, H, W] or [C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")
    pixels = ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()


def to_pil(image: torch.Tensor) -> Image.Image:
    """One image in [-1, 1], [3, H, W] (RGB) or [1, H, W] (grayscale), as a PIL image."""
    if image.dim() != 3:
        raise SVGError(f"to_pil takes one image [C, H, W], got shape {tuple(image.shape)}")
    pixels = to_uint8(image)
    return Image.fromarray(pixels[..., 0], "L") if pixels.shape[-1] == 1 else Image.fromarray(pixels, "RGB")


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int = 8,
    row_labels: Sequence[str] | None = None,
    padding: int = 2,
) -> Path:
    """Write images in [-1, 1] [N, C, H, W] as one PNG grid with ``nrow`` images per row; return the path.

    ``row_labels`` (one string per grid row) are drawn on a white left margin, so a class-conditional grid
    laid out one class per row reads at a glance. The file is written atomically.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise SVGError(f"save_image_grid takes a non-empty batch [N, C, H, W], got shape {tuple(images.shape)}")
    if nrow < 1 or padding < 0:
        raise SVGError(f"save_image_grid: nrow must be >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    pixels = to_uint8(images)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    count, height, width, _ = pixels.shape
    rows, cols = math.ceil(count / nrow), min(nrow, count)
    if row_labels is not None and len(row_labels) != rows:
        raise SVGError(f"save_image_grid: {len(row_labels)} row labels for a grid of {rows} rows")

    font = ImageFont.load_default(size=max(10, min(height // 3, 24)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((measure.textbbox((0, 0), label, font=font)[2] for label in row_labels or []), default=0)
    margin = label_width + 2 * padding if label_width else 0

    canvas = np.full(
        (rows * height + (rows + 1) * padding, margin + cols * width + (cols + 1) * padding, 3),
        GRID_BACKGROUND,
        dtype=np.uint8,
    )
    for index in range(count):
        row, col = divmod(index, nrow)
        top = padding + row * (height + padding)
        left = margin + padding + col * (width + padding)
        canvas[top : top + height, left : left + width] = pixels[index]

    grid = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(grid)
    for row, label in enumerate(row_labels or []):
        center_y = padding + row * (height + padding) + height / 2
        draw.text((padding, center_y), label, fill=(LABEL_COLOR,) * 3, font=font, anchor="lm")

    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return Path(path)


def pca_rgb(features: torch.Tensor, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Feature maps [B, C, h, w] as RGB pictures [B, 3, h, w] in [0, 1]: the first 3 principal components.

    The PCA is fitted jointly on all B*h*w feature vectors (so colours mean the same across the batch),
    through the eigenvectors of their C x C covariance in float64. Each component's sign is fixed so its
    largest loading is positive (deterministic colours), then each is min-max scaled to [0, 1] over the batch.
    ``size`` (int or (H, W)) upsamples the result by nearest neighbour for display.
    Multiply by 2 and subtract 1 to pass the result to ``save_image_grid``.
    """
    if features.dim() != 4:
        raise SVGError(f"pca_rgb takes feature maps [B, C, h, w], got shape {tuple(features.shape)}")
    batch, channels, height, width = features.shape
    vectors = features.detach().to(torch.float64).permute(0, 2, 3, 1).reshape(-1, channels)
    centered = vectors - vectors.mean(dim=0)
    covariance = centered.T @ centered / max(1, centered.shape[0] - 1)
    _, eigenvectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    components = eigenvectors.flip(-1)[:, :3]
    largest = components.abs().argmax(dim=0)
    components = components * components[largest, torch.arange(components.shape[1])].sign()
    projected = centered @ components
    if projected.shape[1] < 3:  # fewer than 3 channels: the missing components are black
        projected = torch.cat([projected, projected.new_zeros(projected.shape[0], 3 - projected.shape[1])], dim=1)

    low, high = projected.min(dim=0).values, projected.max(dim=0).values
    scaled = (projected - low) / (high - low).clamp_min(1e-12)
    rgb = scaled.reshape(batch, height, width, 3).permute(0, 3, 1, 2).to(torch.float32)
    if size is not None:
        rgb = F.interpolate(rgb, size=size, mode="nearest")
    return rgb.contiguous()
