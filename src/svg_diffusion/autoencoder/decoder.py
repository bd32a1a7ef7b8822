"""The LDM / VA-VAE convolutional decoder: a latent map [B, z, r, r] to an image [B, 3, R, R].

Architecture (the public latent-diffusion ``Decoder`` with dropout 0 and no timestep input):

    conv_in -> mid (ResnetBlock, AttnBlock, ResnetBlock)
            -> for each level, lowest resolution first: (num_res_blocks + 1) ResnetBlocks (each followed by an
               AttnBlock when the level's resolution is in ``attn_resolutions``), then nearest x2 + conv
               (except at the highest-resolution level)
            -> GroupNorm(32, eps 1e-6) -> SiLU -> conv_out

Module names follow the public ``decoder.*`` checkpoint keys (``up`` is indexed from the highest-resolution
level 0 although it runs from the last level down), so a converted state dict loads without renaming.
The output is not squashed (no tanh, no clamp): training losses see the raw values, and conversion to
pictures clamps to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.checks import check_each, check_int


@dataclass
class DecoderConfig:
    """Shape of the decoder. Defaults are the paper's (256² images from 392x16x16 latents, ~43M parameters)."""

    z_channels: int = 392
    resolution: int = 256  # output image size; the latent is resolution / 2**(len(ch_mult) - 1)
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    out_ch: int = 3

    def __post_init__(self):
        if not self.ch_mult:
            raise ValueError("ch_mult must have at least one level")
        for name in ("z_channels", "resolution", "ch", "out_ch"):
            check_int(name, getattr(self, name), at_least=1)
        check_int("num_res_blocks", self.num_res_blocks, at_least=0)
        check_each(check_int, "ch_mult", self.ch_mult, at_least=1)
        check_each(check_int, "attn_resolutions", self.attn_resolutions, at_least=1)
        if any(self.ch * m % 32 for m in self.ch_mult):
            raise ValueError(f"every ch * ch_mult must be a multiple of 32 (GroupNorm groups), got ch {self.ch}")
        if self.resolution % self.upsampling_factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by the upsampling factor "
                             f"{self.upsampling_factor} of {len(self.ch_mult)} levels")

    @property
    def upsampling_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.upsampling_factor


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) twice; 1x1 ``nin_shortcut`` when widths differ."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1-conv projections and a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1 head, H*W tokens, C]; the default scale C**-0.5 is the public one.
        q, k, v = (proj(h).reshape(b, 1, c, height * width).transpose(2, 3) for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(2, 3).reshape(b, c, height, width)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv; on the fast CPU path computed at the low resolution (:func:`upsample_conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_cpu_inference(x):
            return upsample_conv(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# Which of a 3x3 kernel's rows (or columns) land on each of the two low-resolution rows an output row of phase
# a (its index mod 2) reads after a nearest x2: phase 0 reads rows (i - 1, i) and gets kernel rows (0, 1 + 2),
# phase 1 reads (i, i + 1) and gets (0 + 1, 2).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv2d(nearest_x2(x), weight, bias, padding=1)`` for a 3x3 ``weight``, without the x2 input.

    After a nearest x2 each output pixel of phase (a, b) (its row and column mod 2) sees 2x2 distinct input
    pixels, so the conv is four 2x2 convs of the low-resolution input (one conv with 4x the output channels
    over the input padded by 1; phase (a, b) at (i, j) is that conv's output at (i + a, j + b)), interleaved.
    That is 16 instead of 36 multiply-adds per output channel, input channel and low-resolution pixel: the
    demo decoder's two upsampling convs run ~1.3x faster on the CPU (one thread, channels_last); equal to
    the plain path to fp32 rounding (tests/test_autoencoder_decoder.py).
    """
    batch, _, height, width = x.shape
    out_channels = weight.shape[0]
    taps = _PHASE_TAPS.to(weight)
    phase_weights = torch.cat([torch.einsum("ak,oikl,bl->oiab", taps[a], weight, taps[b])
                               for a in (0, 1) for b in (0, 1)])
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase_weights, bias.repeat(4))  # [B, 4 * out, H + 1, W + 1]
    channels_last = phases.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty(batch, out_channels, 2 * height, 2 * width, dtype=phases.dtype, device=phases.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # [B, C, H, 2, W, 2] views of the output and [B, 2, 2, C, H + 1, W + 1] of the phases, in either layout.
    if channels_last:
        out_view = out.permute(0, 2, 3, 1).view(batch, height, 2, width, 2, out_channels).permute(0, 5, 1, 2, 3, 4)
        phase_view = phases.permute(0, 2, 3, 1).view(batch, height + 1, width + 1, 2, 2, out_channels)
        phase_view = phase_view.permute(0, 3, 4, 5, 1, 2)
    else:
        out_view = out.view(batch, out_channels, height, 2, width, 2)
        phase_view = phases.view(batch, 2, 2, out_channels, height + 1, width + 1)
    for a in (0, 1):
        for b in (0, 1):
            out_view[:, :, :, a, :, b].copy_(phase_view[:, a, b, :, a:a + height, b:b + width])
    return out


class UpLevel(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (empty or one per block), optional ``upsample``."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, use_attn: bool, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if j == 0 else out_channels, out_channels) for j in range(num_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks if use_attn else 0))
        if upsample:
            self.upsample = Upsample(out_channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[j](h)
        return self.upsample(h) if hasattr(self, "upsample") else h


class Decoder(nn.Module):
    """The paper's convolutional (LDM) decoder: latent [B, z_channels, r, r] -> image [B, out_ch, r*f, r*f]."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        levels = len(config.ch_mult)
        width = config.ch * config.ch_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, width, kernel_size=3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(width, width)
        self.mid.attn_1 = AttnBlock(width)
        self.mid.block_2 = ResnetBlock(width, width)

        # Built from the lowest resolution up; stored so that index 0 is the highest resolution (public keys).
        up_levels = []
        resolution = config.latent_size
        for level in reversed(range(levels)):
            out_width = config.ch * config.ch_mult[level]
            up_levels.append(UpLevel(width, out_width, config.num_res_blocks + 1,
                                     use_attn=resolution in config.attn_resolutions, upsample=level != 0))
            width = out_width
            resolution *= 2
        self.up = nn.ModuleList(reversed(up_levels))

        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, config.out_ch, kernel_size=3, padding=1)

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight the adaptive GAN weight differentiates against (``conv_out.weight``)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        channels_last = fast_cpu_inference(z)
        h = self.conv_in(z.contiguous(memory_format=torch.channels_last) if channels_last else z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = level(h)
        images = self.conv_out(F.silu(self.norm_out(h)))
        return images.contiguous() if channels_last else images  # callers get the usual layout either way


def fast_cpu_inference(x: torch.Tensor) -> bool:
    """Whether the decoder takes its fast CPU path (fp32 inference on the CPU): activations in channels_last, and
    the upsampling convs at the low resolution (:func:`upsample_conv`).

    oneDNN's convolutions work in channels_last natively: the demo decoder decodes 80 latents ~10% faster (one
    thread), and upsample_conv takes it ~6% further (1.06x one thread, 1.05x two; docs/results.md), equal to
    fp32 rounding. Not under bf16 autocast (GroupNorm in channels_last made it ~1.4x slower, and upsample_conv
    gained 2%), not with gradients (training measured no faster, and keeps its numbers), not on GPUs (not
    measured).
    """
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))
