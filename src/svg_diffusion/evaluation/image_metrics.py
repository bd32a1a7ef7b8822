"""Reconstruction metrics between image batches: PSNR and SSIM, per image, in torch.

Images follow the package convention, [B, C, H, W] in [-1, 1], so the default ``data_range`` is 2. Both
metrics only depend on values relative to the range: PSNR/SSIM of [-1, 1] images with ``data_range=2`` equal
those of the same images mapped to [0, 1] with ``data_range=1`` or to [0, 255] with ``data_range=255``.
No quantization is applied; quantize first (``round((x + 1) * 127.5)``, ``data_range=255``) to measure the
PNG files a reconstruction would be saved as.

- PSNR = 10 log10(data_range^2 / MSE), the MSE over all pixels and channels of one image; identical images
  give +inf. The usual reported number is the mean over images (``.mean()`` of the result).
- SSIM (Wang et al. 2004) with an 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, local statistics
  with population (biased) variances, over the "valid" region only (no padding, like the reference MATLAB
  code and scikit-image), computed on each channel separately and averaged over channels and positions.
  Grayscale images simply have one channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SVGError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(x: torch.Tensor, y: torch.Tensor, metric: str) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise SVGError(f"{metric} needs two image batches [B, C, H, W] of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image pair, [B] (float64; +inf where identical)."""
    _check_pair(x, y, "PSNR")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Structural similarity of each image pair, [B] in [-1, 1] (float64; 1 where identical)."""
    _check_pair(x, y, "SSIM")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise SVGError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    channels = x.shape[1]
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, torch.float64).to(x.device)
    # The 2-D Gaussian is separable: blur rows, then columns, each channel on its own (groups=channels).
    rows = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    cols = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(image, rows, groups=channels), cols, groups=channels)

    x, y = x.double(), y.double()
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)

