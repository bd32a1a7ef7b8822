"""One Vision Transformer for DINOv3-, DINOv2- and plain-ViT-style models.

Parameter and buffer names are Meta's (``cls_token``, ``storage_tokens``, ``patch_embed.proj``,
``rope_embed.periods``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.ls1.gamma``, ``blocks.{i}.mlp.w1``, ``norm``,
and for learned positions DINOv2's ``pos_embed`` and ``register_tokens``), so a released ``.pth`` state dict
loads as it is. Token order: class token, storage/register tokens, patch tokens (row-major).

The model is trainable (our own self-distillation pretrains the demo encoder): ``masks`` replace chosen
patch embeddings by ``mask_token`` (iBOT). RoPE's training-time coordinate augmentations (shift, jitter,
rescale) are deliberately absent: a frozen encoder must see the same positions in training and inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SVGError
from .configs import ViTConfig


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches -> embed_dim vectors, [B,3,H,W] -> [B, (H/p)(W/p), D]."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


def rope_periods(head_dim: int, base: float) -> Tensor:
    """The head_dim/4 RoPE periods base^(2i / (head_dim/2)): each axis (y, x) gets head_dim/4 frequencies."""
    quarter = head_dim // 4
    return base ** (2 * torch.arange(quarter, dtype=torch.float32) / (head_dim // 2))


class RopePositionEmbedding(nn.Module):
    """Axial 2-D rotary embedding of patch centres (DINOv3), without learnable weights.

    Patch centres are scaled to [-1, 1] (per axis for "separate"), so the same table serves every
    resolution and aspect ratio. Returns (sin, cos), each [h*w, head_dim], in float32.
    """

    def __init__(self, head_dim: int, base: float, normalize_coords: str):
        super().__init__()
        self.normalize_coords = normalize_coords
        # Stored in Meta's checkpoints, so it is a persistent buffer here too.
        self.register_buffer("periods", rope_periods(head_dim, base), persistent=True)

    def forward(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        device = self.periods.device
        denominators = {
            "separate": (height, width),
            "max": (max(height, width),) * 2,
            "min": (min(height, width),) * 2,
        }[self.normalize_coords]
        coords_y = torch.arange(0.5, height, device=device, dtype=torch.float32) / denominators[0]
        coords_x = torch.arange(0.5, width, device=device, dtype=torch.float32) / denominators[1]
        coords = torch.stack(torch.meshgrid(coords_y, coords_x, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0  # [h*w, 2] in [-1, 1]
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # [h*w, 2, D/4]
        angles = angles.flatten(1, 2).tile(2)  # [h*w, D]: (y freqs, x freqs) twice, for rotate_half
        return torch.sin(angles), torch.cos(angles)


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of x [..., N, D] by the angles behind sin/cos [N, D]."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class QKVLinear(nn.Linear):
    """The fused q, k, v projection. With ``mask_k_bias`` the bias is multiplied by the ``bias_mask`` buffer
    (ones for q and v, zeros for k), as in DINOv3, whose checkpoints store both."""

    def __init__(self, dim: int, bias: bool, mask_k_bias: bool):
        super().__init__(dim, 3 * dim, bias=bias)
        bias_mask = None
        if mask_k_bias:
            bias_mask = torch.ones(3 * dim)
            bias_mask[dim : 2 * dim] = 0.0
        self.register_buffer("bias_mask", bias_mask)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias if self.bias_mask is None else self.bias * self.bias_mask.to(self.bias.dtype)
        return F.linear(x, self.weight, bias)


class Attention(nn.Module):
    """Multi-head self-attention; RoPE (when given) rotates q and k of the patch tokens only."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.attn_impl = cfg.attn_impl
        self.qkv = QKVLinear(cfg.embed_dim, bias=cfg.qkv_bias, mask_k_bias=cfg.mask_k_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.proj_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        if rope is not None:
            q, k = self._rotate(q, rope), self._rotate(k, rope)
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            out = weights.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))

    @staticmethod
    def _rotate(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        sin, cos = rope
        prefix = x.shape[-2] - sin.shape[-2]  # class + storage tokens carry no position
        # Rotate in float32 (Meta's RoPE dtype for the released models), then return to x's dtype.
        patches = apply_rope(x[..., prefix:, :].float(), sin, cos).to(x.dtype)
        return torch.cat([x[..., :prefix, :], patches], dim=-2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()  # exact (erf) GELU, as Meta's and torchvision's ViTs
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)  # gate
        self.w2 = nn.Linear(dim, hidden, bias=bias)  # value
        self.w3 = nn.Linear(hidden, dim, bias=bias)  # output

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(ffn(norm2 x))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(dim, cfg.layerscale_init) if cfg.layerscale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        ffn = Mlp if cfg.ffn_layer == "mlp" else SwiGLUFFN
        self.mlp = ffn(dim, cfg.ffn_hidden_dim, bias=cfg.ffn_bias)
        self.ls2 = LayerScale(dim, cfg.layerscale_init) if cfg.layerscale_init is not None else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """A ViT as described by ``cfg``; input is an already normalized image batch [B, 3, H, W]."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        storage = nn.Parameter(torch.zeros(1, cfg.num_storage_tokens, dim)) if cfg.num_storage_tokens else None
        if cfg.position == "rope":
            self.storage_tokens = storage
            self.rope_embed = RopePositionEmbedding(cfg.head_dim, cfg.rope_base, cfg.rope_normalize_coords)
            self.pos_embed = None
        else:
            # DINOv2 calls the same tokens "registers"; keeping its name keeps its checkpoints loadable.
            self.register_tokens = storage
            self.rope_embed = None
            grid = cfg.image_size // cfg.patch_size
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.init_weights()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def extra_tokens(self) -> Tensor | None:
        """The storage (DINOv3) or register (DINOv2) tokens, whichever this model has."""
        return self.storage_tokens if self.config.position == "rope" else self.register_tokens

    def init_weights(self) -> None:
        """DINOv3's initialization: truncated-normal(0.02) linears with zero bias, small random tokens."""
        nn.init.normal_(self.cls_token, std=0.02)
        if self.extra_tokens is not None:
            nn.init.normal_(self.extra_tokens, std=0.02)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                nn.init.constant_(module.gamma, module.init_value)

    def check_input_size(self, height: int, width: int) -> None:
        p = self.config.patch_size
        if height % p or width % p:
            raise SVGError(f"image size {height}x{width} is not a multiple of the encoder's patch size {p}")

    def forward(self, x: Tensor, masks: Tensor | None = None, layer: int | None = None) -> dict[str, Tensor]:
        return self.forward_features(x, masks=masks, layer=layer)

    def forward_features(self, x: Tensor, masks: Tensor | None = None, layer: int | None = None) -> dict[str, Tensor]:
        """Run the model on normalized images x [B,3,H,W].

        masks: optional bool [B, N] (N = number of patches); True replaces that patch embedding by
        ``mask_token``. layer: take the output of this block (1-based) instead of the last one; the final
        norm is applied to it either way (Meta's ``get_intermediate_layers(norm=True)``).
        Returns ``x_norm_clstoken`` [B,D], ``x_storage_tokens`` [B,S,D], ``x_norm_patchtokens`` [B,N,D]
        (all after the final norm) and ``x_prenorm`` [B,1+S+N,D].
        """
        depth = len(self.blocks)
        if layer is not None and not 1 <= layer <= depth:
            raise SVGError(f"layer {layer} is out of range: this encoder has blocks 1..{depth}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise SVGError(f"expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        self.check_input_size(x.shape[-2], x.shape[-1])
        height, width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self._prepare_tokens(x, masks, height, width)
        rope = self.rope_embed(height, width) if self.rope_embed is not None else None
        for block in self.blocks[: layer or depth]:
            tokens = block(tokens, rope)
        normed = self.norm(tokens)
        prefix = self.config.num_prefix_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_storage_tokens": normed[:, 1:prefix],
            "x_norm_patchtokens": normed[:, prefix:],
            "x_prenorm": tokens,
        }

    def _prepare_tokens(self, x: Tensor, masks: Tensor | None, height: int, width: int) -> Tensor:
        patches = self.patch_embed(x)
        batch = patches.shape[0]
        cls = self.cls_token
        if masks is not None:
            if masks.shape != patches.shape[:2]:
                raise SVGError(f"masks must be [B, N] = {tuple(patches.shape[:2])}, got {tuple(masks.shape)}")
            patches = torch.where(masks.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)
        else:
            # Keeps mask_token in the graph, so DDP sees a gradient for every parameter on unmasked steps too.
            cls = cls + 0 * self.mask_token
        cls = cls.expand(batch, -1, -1)
        if self.pos_embed is not None:
            table = self._position_table(height, width)
            cls, patches = cls + table[:, :1], patches + table[:, 1:]
        parts = [cls, patches]
        if self.extra_tokens is not None:  # registers carry no position (added after the table, as DINOv2)
            parts.insert(1, self.extra_tokens.expand(batch, -1, -1))
        return torch.cat(parts, dim=1)

    def _position_table(self, height: int, width: int) -> Tensor:
        """The learned table [1, 1+h*w, D], bicubically resampled from its square training grid to h×w."""
        grid = self.config.image_size // self.patch_size
        if (height, width) == (grid, grid):
            return self.pos_embed
        dim = self.embed_dim
        patch_table = self.pos_embed[:, 1:].float().reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        offset = self.config.pos_embed_interp_offset
        if offset:
            # Meta's DINOv2: resample by the scale factor (n + offset) / grid (historical float-safety kludge).
            size_or_scale = {"scale_factor": ((height + offset) / grid, (width + offset) / grid)}
        else:
            size_or_scale = {"size": (height, width)}
        patch_table = F.interpolate(
            patch_table, mode="bicubic", align_corners=False,
            antialias=self.config.pos_embed_interp_antialias, **size_or_scale,
        )
        patch_table = patch_table.permute(0, 2, 3, 1).reshape(1, height * width, dim).to(self.pos_embed.dtype)
        return torch.cat([self.pos_embed[:, :1], patch_table], dim=1)
