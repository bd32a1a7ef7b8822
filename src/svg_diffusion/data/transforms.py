"""Image transforms: any PIL image to RGB, the ADM/DiT center crop, and the one batch augmentation.

Datasets are deterministic (an index gives the same tensor every time). The only randomness, horizontal
flips, is applied by trainers to whole batches with an explicit ``torch.Generator``, so a run is reproducible
and 1 process or N processes sharing a global batch flip the same samples.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

WHITE = (255, 255, 255, 255)
# Integer modes wider than 8 bits. PIL keeps 16-bit grayscale (PNG, TIFF) in these; its own conversion to
# 8 bits clips at 255, which would turn almost every pixel white.
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB.

    - Transparency (alpha channel, palette or ``transparency`` key) is composited on white: fully
      transparent pixels often store arbitrary colours, and icons and cut-outs are drawn for a light page.
    - 16-bit grayscale ("I;16*") is scaled to 8 bits (v / 257, so 65535 is white), not clipped.
      Mode "I" (32-bit integers, how some readers store 16-bit PNG) is taken to hold the same 0..65535 range.
    - Everything else (L, 1, P, CMYK, YCbCr, ...) uses PIL's own conversion.
    """
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    if image.mode in WIDE_GRAY_MODES:
        gray = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """Resize so the short side is ``size`` and take the central square: uint8 [size, size, C].

    The ADM/DiT recipe, for comparable FID numbers: while the short side is at least twice ``size``, halve
    the image with a box filter (cheap, alias-free), then one bicubic resize to the exact short side,
    then crop the centre (odd leftovers go to the right and bottom).
    """
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.array(image.crop((left, top, left + size, top + size)))


def random_hflip(
    images: torch.Tensor,
    generator: torch.Generator,
    global_batch_size: int | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Flip each image [B, C, H, W] left-right with probability 1/2, the coin flips drawn from ``generator``.

    In data-parallel training, draw for the global batch and keep this rank's slice: pass
    ``global_batch_size`` and ``offset`` (this rank's first index in the global batch), so the flips do not
    depend on how many processes share the batch. By default the batch is the whole global batch.
    """
    batch = images.shape[0]
    total = batch if global_batch_size is None else global_batch_size
    if not 0 <= offset <= total - batch:
        raise ValueError(f"random_hflip: slice [{offset}, {offset + batch}) is outside a global batch of {total}")
    coins = torch.rand(total, generator=generator, device=generator.device)[offset : offset + batch]
    flip = (coins < 0.5).to(images.device).view(batch, *([1] * (images.dim() - 1)))
    return torch.where(flip, images.flip(-1), images)
