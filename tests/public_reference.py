"""The public SVG code's file layouts and forward passes, written independently for convert-official's tests.

Everything here works on plain state dicts in the PUBLIC key layout (docs/official.md) with torch.nn.functional and
shares no code with svg_diffusion's modules, so a parity test compares two separate implementations:

- random public-format state dicts: torchvision ``VisionTransformer`` (``extra_vit.*``), the LDM decoder
  (``decoder.*``), the SVG DiT (``ln1``, ``blocks.{i}``, ``final_layer`` with the learn_sigma half);
- the torchvision ViT forward (class token prepended then dropped, fused ``in_proj`` attention through
  ``F.multi_head_attention_forward``, LayerNorm eps 1e-6, exact GELU) with the public 2-layer head;
- the public distribution alignment with batch statistics (``torch.std`` per channel, mean over channels);
- the LDM decoder forward (bmm attention as the LDM code writes it, GroupNorm eps 1e-6);
- the public DiT forward on tokens [B, T, C] (explicit softmax attention, q/k LayerNorm eps 1e-5);
- the public Euler sampler: two CFG passes, ``linspace`` in float32, each point shifted in Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------ random public weights


class RandomState(dict):
    """A state dict filled with random tensors at sensible scales, entry by entry."""

    def __init__(self, seed: int):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(shape, generator=self.generator) * scale

    def linear(self, name: str, out: int, inp: int, scale: float = 1.0) -> None:
        self[f"{name}.weight"] = self.randn(out, inp, scale=scale * inp ** -0.5)
        self[f"{name}.bias"] = self.randn(out, scale=0.1)

    def conv(self, name: str, out: int, inp: int, kernel: int) -> None:
        self[f"{name}.weight"] = self.randn(out, inp, kernel, kernel, scale=(inp * kernel * kernel) ** -0.5)
        self[f"{name}.bias"] = self.randn(out, scale=0.1)

    def norm(self, name: str, dim: int) -> None:
        self[f"{name}.weight"] = 1 + self.randn(dim, scale=0.1)
        self[f"{name}.bias"] = self.randn(dim, scale=0.1)


def torchvision_vit_state(seed: int, width: int, depth: int, mlp_dim: int, patch: int, grid: int,
                          out_dim: int) -> dict[str, Tensor]:
    """``extra_vit.*`` of the public autoencoder: torchvision's VisionTransformer with the 2-layer head."""
    s = RandomState(seed)
    s["extra_vit.class_token"] = s.randn(1, 1, width, scale=0.5)
    s.conv("extra_vit.conv_proj", width, 3, patch)
    s["extra_vit.encoder.pos_embedding"] = s.randn(1, 1 + grid * grid, width, scale=0.5)
    for i in range(depth):
        layer = f"extra_vit.encoder.layers.encoder_layer_{i}"
        s.norm(f"{layer}.ln_1", width)
        s[f"{layer}.self_attention.in_proj_weight"] = s.randn(3 * width, width, scale=width ** -0.5)
        s[f"{layer}.self_attention.in_proj_bias"] = s.randn(3 * width, scale=0.1)
        s.linear(f"{layer}.self_attention.out_proj", width, width)
        s.norm(f"{layer}.ln_2", width)
        s.linear(f"{layer}.mlp.0", mlp_dim, width)
        s.linear(f"{layer}.mlp.3", width, mlp_dim)
    s.norm("extra_vit.encoder.ln", width)
    s.linear("extra_vit.heads.0", width, width)
    s.linear("extra_vit.heads.2", out_dim, width, scale=3.0)  # a residual on another scale than the features
    return dict(s)


def ldm_decoder_state(seed: int, ch: int, ch_mult: list[int], num_res_blocks: int, attn_resolutions: list[int],
                      z_channels: int, resolution: int, out_ch: int) -> dict[str, Tensor]:
    """``decoder.*``: the LDM Decoder's parameters, built level by level as the LDM constructor does."""
    s = RandomState(seed)

    def resblock(name: str, inp: int, out: int) -> None:
        s.norm(f"{name}.norm1", inp)
        s.conv(f"{name}.conv1", out, inp, 3)
        s.norm(f"{name}.norm2", out)
        s.conv(f"{name}.conv2", out, out, 3)
        if inp != out:
            s.conv(f"{name}.nin_shortcut", out, inp, 1)

    def attn(name: str, channels: int) -> None:
        s.norm(f"{name}.norm", channels)
        for proj in ("q", "k", "v", "proj_out"):
            s.conv(f"{name}.{proj}", channels, channels, 1)

    block_in = ch * ch_mult[-1]
    res = resolution // 2 ** (len(ch_mult) - 1)
    s.conv("decoder.conv_in", block_in, z_channels, 3)
    resblock("decoder.mid.block_1", block_in, block_in)
    attn("decoder.mid.attn_1", block_in)
    resblock("decoder.mid.block_2", block_in, block_in)
    for level in reversed(range(len(ch_mult))):
        block_out = ch * ch_mult[level]
        for j in range(num_res_blocks + 1):
            resblock(f"decoder.up.{level}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn_resolutions:
                attn(f"decoder.up.{level}.attn.{j}", block_in)
        if level != 0:
            s.conv(f"decoder.up.{level}.upsample.conv", block_in, block_in, 3)
            res *= 2
    s.norm("decoder.norm_out", block_in)
    s.conv("decoder.conv_out", out_ch, block_in, 3)
    return dict(s)


def mae_sincos_pos_embed(dim: int, grid: int) -> Tensor:
    """The MAE/DiT fixed 2-D sin-cos table [1, grid², dim]: first half from the column, second from the row."""
    coords = torch.arange(grid, dtype=torch.float64)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one_axis(pos: Tensor) -> Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    columns = coords[None, :].expand(grid, grid)
    rows = coords[:, None].expand(grid, grid)
    return torch.cat([one_axis(columns), one_axis(rows)], dim=1).float()[None]


def dit_state(seed: int, in_channels: int, grid: int, hidden: int, depth: int, num_heads: int, num_classes: int,
              mlp_ratio: float = 4.0, learn_sigma: bool = True, qk_norm: bool = True) -> dict[str, Tensor]:
    """A public SVG DiT state dict (trained-looking: nothing zero-initialized)."""
    s = RandomState(seed)
    head_dim, mlp = hidden // num_heads, int(hidden * mlp_ratio)
    s.linear("ln1", hidden, in_channels)
    s["pos_embed"] = mae_sincos_pos_embed(hidden, grid)
    s.linear("t_embedder.mlp.0", hidden, 256, scale=4.0)
    s.linear("t_embedder.mlp.2", hidden, hidden)
    s["y_embedder.embedding_table.weight"] = s.randn(num_classes + 1, hidden)
    for i in range(depth):
        s.linear(f"blocks.{i}.attn.qkv", 3 * hidden, hidden)
        if qk_norm:
            s.norm(f"blocks.{i}.attn.q_norm", head_dim)
            s.norm(f"blocks.{i}.attn.k_norm", head_dim)
        s.linear(f"blocks.{i}.attn.proj", hidden, hidden)
        s.linear(f"blocks.{i}.mlp.fc1", mlp, hidden)
        s.linear(f"blocks.{i}.mlp.fc2", hidden, mlp)
        s.linear(f"blocks.{i}.adaLN_modulation.1", 6 * hidden, hidden, scale=0.5)
    s.linear("final_layer.linear", (2 if learn_sigma else 1) * in_channels, hidden)
    s.linear("final_layer.adaLN_modulation.1", 2 * hidden, hidden, scale=0.5)
    return dict(s)


# ----------------------------------------------------------------------------------------- public forwards


def layer_norm(x: Tensor, sd: dict[str, Tensor], name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def dense(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def torchvision_vit_residual(sd: dict[str, Tensor], x_dino: Tensor, num_heads: int) -> Tensor:
    """The public ``extra_vit(x)``: [B, out_dim, N] from ImageNet-normalized images."""
    weight = sd["extra_vit.conv_proj.weight"]
    patches = F.conv2d(x_dino, weight, sd["extra_vit.conv_proj.bias"], stride=weight.shape[-1])
    batch, width = patches.shape[:2]
    x = patches.reshape(batch, width, -1).permute(0, 2, 1)
    x = torch.cat([sd["extra_vit.class_token"].expand(batch, -1, -1), x], dim=1)
    x = x + sd["extra_vit.encoder.pos_embedding"]
    depth = len({k.split(".")[3] for k in sd if k.startswith("extra_vit.encoder.layers.")})
    for i in range(depth):
        layer = f"extra_vit.encoder.layers.encoder_layer_{i}"
        y = layer_norm(x, sd, f"{layer}.ln_1", 1e-6).transpose(0, 1)  # (L, B, E) for the functional MHA
        attended, _ = F.multi_head_attention_forward(
            y, y, y, width, num_heads, sd[f"{layer}.self_attention.in_proj_weight"],
            sd[f"{layer}.self_attention.in_proj_bias"], None, None, False, 0.0,
            sd[f"{layer}.self_attention.out_proj.weight"], sd[f"{layer}.self_attention.out_proj.bias"],
            training=False, need_weights=False,
        )
        x = x + attended.transpose(0, 1)
        y = layer_norm(x, sd, f"{layer}.ln_2", 1e-6)
        x = x + dense(F.gelu(dense(y, sd, f"{layer}.mlp.0")), sd, f"{layer}.mlp.3")
    x = layer_norm(x, sd, "extra_vit.encoder.ln", 1e-6)[:, 1:]  # drop the class token
    x = dense(F.gelu(dense(x, sd, "extra_vit.heads.0")), sd, "extra_vit.heads.2")
    return x.transpose(1, 2)


def match_distribution(h: Tensor, h_vit: Tensor, eps: float = 1e-6) -> Tensor:
    """The public alignment: batch statistics, std = mean over channels of per-channel unbiased stds."""
    mean_h, std_h = h.mean(dim=(0, 2)).mean(), h.std(dim=(0, 2)).mean()
    mean_v, std_v = h_vit.mean(dim=(0, 2)).mean(), h_vit.std(dim=(0, 2)).mean()
    return (h_vit - mean_v) / (std_v + eps) * std_h + mean_h


def public_encode(sd: dict[str, Tensor], dino_patch_tokens: Callable[[Tensor], Tensor], images: Tensor,
                  patch: int, use_outnorm: bool, residual_heads: int = 8) -> Tensor:
    """The public ``DinoDecoder.encode`` of images in [-1, 1] (normalized as its ``get_input`` does)."""
    x_dino = ((images + 1.0) / 2.0 - IMAGENET_MEAN) / IMAGENET_STD
    h = dino_patch_tokens(x_dino).permute(0, 2, 1)  # [B, D, N]
    h_vit = torchvision_vit_residual(sd, x_dino, residual_heads)
    if use_outnorm:
        h_vit = match_distribution(h, h_vit)
    h = torch.cat([h, h_vit], dim=1)
    return h.view(h.shape[0], -1, images.shape[2] // patch, images.shape[3] // patch)


def ldm_decode(sd: dict[str, Tensor], z: Tensor) -> Tensor:
    """The LDM ``Decoder.forward`` (no tanh) on ``decoder.*`` weights."""

    def group_norm(x: Tensor, name: str) -> Tensor:
        return F.group_norm(x, 32, sd[f"decoder.{name}.weight"], sd[f"decoder.{name}.bias"], 1e-6)

    def conv(x: Tensor, name: str) -> Tensor:
        weight = sd[f"decoder.{name}.weight"]
        return F.conv2d(x, weight, sd[f"decoder.{name}.bias"], padding=weight.shape[-1] // 2)

    def resblock(x: Tensor, name: str) -> Tensor:
        h = conv(F.silu(group_norm(x, f"{name}.norm1")), f"{name}.conv1")
        h = conv(F.silu(group_norm(h, f"{name}.norm2")), f"{name}.conv2")
        shortcut = conv(x, f"{name}.nin_shortcut") if f"decoder.{name}.nin_shortcut.weight" in sd else x
        return shortcut + h

    def attention(x: Tensor, name: str) -> Tensor:
        h = group_norm(x, f"{name}.norm")
        q, k, v = (conv(h, f"{name}.{p}") for p in ("q", "k", "v"))
        b, c, height, width = q.shape
        w = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c ** -0.5
        w = F.softmax(w, dim=2)
        h = torch.bmm(v.reshape(b, c, -1), w.permute(0, 2, 1)).reshape(b, c, height, width)
        return x + conv(h, f"{name}.proj_out")

    h = conv(z, "conv_in")
    h = resblock(attention(resblock(h, "mid.block_1"), "mid.attn_1"), "mid.block_2")
    levels = len({k.split(".")[2] for k in sd if k.startswith("decoder.up.")})
    for level in reversed(range(levels)):
        j = 0
        while f"decoder.up.{level}.block.{j}.conv1.weight" in sd:
            h = resblock(h, f"up.{level}.block.{j}")
            if f"decoder.up.{level}.attn.{j}.q.weight" in sd:
                h = attention(h, f"up.{level}.attn.{j}")
            j += 1
        if f"decoder.up.{level}.upsample.conv.weight" in sd:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"up.{level}.upsample.conv")
    return conv(F.silu(group_norm(h, "norm_out")), "conv_out")


def public_dit(sd: dict[str, Tensor], x: Tensor, t: Tensor, y: Tensor, num_heads: int) -> Tensor:
    """The public DiT forward on tokens x [B, T, C] -> [B, T, out] (with the learn_sigma half, if stored)."""
    batch, tokens, _ = x.shape
    h = dense(x, sd, "ln1") + sd["pos_embed"]
    hidden = h.shape[-1]
    head_dim = hidden // num_heads
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_emb = dense(F.silu(dense(torch.cat([args.cos(), args.sin()], dim=-1), sd, "t_embedder.mlp.0")), sd,
                  "t_embedder.mlp.2")
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]

    def modulate(v: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return F.layer_norm(v, (hidden,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]

    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        shift1, scale1, gate1, shift2, scale2, gate2 = dense(F.silu(c), sd, f"blocks.{i}.adaLN_modulation.1").chunk(6, 1)
        qkv = dense(modulate(h, shift1, scale1), sd, f"blocks.{i}.attn.qkv")
        q, k, v = qkv.reshape(batch, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        if f"blocks.{i}.attn.q_norm.weight" in sd:
            q, k = layer_norm(q, sd, f"blocks.{i}.attn.q_norm", 1e-5), layer_norm(k, sd, f"blocks.{i}.attn.k_norm", 1e-5)
        weights = torch.softmax((q * head_dim ** -0.5) @ k.transpose(-2, -1), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, tokens, hidden)
        h = h + gate1[:, None] * dense(attended, sd, f"blocks.{i}.attn.proj")
        mlp = dense(F.gelu(dense(modulate(h, shift2, scale2), sd, f"blocks.{i}.mlp.fc1"), approximate="tanh"), sd,
                    f"blocks.{i}.mlp.fc2")
        h = h + gate2[:, None] * mlp
    shift, scale = dense(F.silu(c), sd, "final_layer.adaLN_modulation.1").chunk(2, 1)
    return dense(modulate(h, shift, scale), sd, "final_layer.linear")


def public_time_grid(num_steps: int, shift: float) -> Tensor:
    """The public grid: float32 linspace, each point shifted as a Python float, back to a float32 tensor."""
    base = torch.linspace(0, 1, num_steps + 1)
    return torch.tensor([shift * t / (1 + (shift - 1) * t) for t in base.tolist()])


def public_euler_sample(model: Callable[[Tensor, Tensor, Tensor], Tensor], z: Tensor, labels: Tensor,
                        null_class: int, num_steps: int, cfg: float, shift: float) -> Tensor:
    """The public ``RectifiedFlow.sample`` (euler, constant CFG) on tokens z [B, T, C]."""
    t_seq = public_time_grid(num_steps, shift)
    dt = t_seq[1:] - t_seq[:-1]
    null = torch.full_like(labels, null_class)

    def velocity(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        out = model(x, t, y)
        return out.chunk(2, dim=2)[0] if out.shape[2] != x.shape[2] else out

    for i in range(num_steps):
        t = t_seq[i].repeat(z.shape[0])
        v_cond, v_uncond = velocity(z, t, labels), velocity(z, t, null)
        z = z + dt[i] * (v_uncond + cfg * (v_cond - v_uncond))
    return z
