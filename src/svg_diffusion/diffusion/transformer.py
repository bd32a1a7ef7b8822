"""The latent diffusion transformer: SiT/DiT with adaLN-Zero over a grid of latent tokens.

The default configuration is the public SVG model (docs/diffusion.md, "The model"): patch size 1 (one token per latent
position), an input Linear named ``ln1``, a fixed 2-D sin-cos position embedding stored as the buffer
``pos_embed``, QK-norm (LayerNorm over the head dimension), tanh-GELU MLPs, block norms without affine
parameters and adaLN-Zero conditioning on ``t_embedding + class_embedding``. Parameter names match the public
checkpoints, so ``load_state_dict`` takes them after only the ``learn_sigma`` switch is set.

Switches that later work (LightningDiT and others) showed to train faster: ``norm="rmsnorm"``,
``mlp="swiglu"``, ``rope=True`` (2-D rotary position embedding in attention) and ``patch_size=2``.

Shapes: ``forward(x [B, C, H, W], t [B], y [B]) -> velocity [B, C, H, W]``; ``t`` in [0, 1] with t=0 noise and
t=1 data (see :mod:`.flow`); ``y`` in [0, num_classes], where ``num_classes`` is the null ("no class") label.

MeanFlow (:mod:`.mean_flow`) adds optional inputs, each off by default so that a model without them has the
very same parameters and outputs: ``interval_input`` (the other end ``r`` of an interval; the model then
predicts the average velocity from t to r) and ``guidance_input`` (the guidance scale, Improved MeanFlow).
:func:`warm_start_mean_flow` turns a trained flow-matching model into a MeanFlow one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from ..errors import SVGError
from ..utils.checks import check_int, check_number
from ..utils.pretrained import load_pretrained, stored_state, write_pretrained

FORMAT = "svg-diffusion-dit"

# Named sizes (depth, width, heads) of the DiT/SiT family; XL is the paper's model (~676M parameters).
DIT_SIZES: dict[str, dict[str, int]] = {
    "S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
    "XL": {"depth": 28, "hidden_size": 1152, "num_heads": 16},
}


@dataclass
class DiTConfig:
    """Architecture of a :class:`DiT`. The defaults are SVG-XL on 392x16x16 latents (ImageNet 256)."""

    in_channels: int = 392  # latent channels C (384 DINO + 8 residual for the paper)
    input_size: int = 16  # latent grid side (H = W)
    patch_size: int = 1  # 1 = one token per latent position (the paper); 2 = 2x2 positions per token
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # embedding table has num_classes + 1 rows; the last is the null class
    learn_sigma: bool = False  # public checkpoints: True (2C outputs, only the first C are used)
    qk_norm: bool = True
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    rope: bool = False  # 2-D rotary embedding on q/k, on top of the fixed sin-cos embedding
    # MeanFlow: a second time input, the interval's other end r, embedded as its length r - t (see DiT.condition).
    interval_input: bool = False
    # Improved MeanFlow: the classifier-free guidance scale w as an input, embedded as w - 1.
    guidance_input: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "input_size", "patch_size", "hidden_size", "depth", "num_heads"):
            check_int(name, getattr(self, name), at_least=1)
        check_int("num_classes", self.num_classes, at_least=0)  # 0: unconditional
        check_number("mlp_ratio", self.mlp_ratio, above=0)
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:  # the 2-D sin-cos embedding gives a quarter of the width to each sin/cos axis
            raise ValueError(f"hidden_size must be a multiple of 4, got {self.hidden_size}")
        if self.rope and self.head_dim % 4:
            raise ValueError(f"rope needs a head dim divisible by 4, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        """Tokens per side: ``input_size // patch_size``."""
        return self.input_size // self.patch_size

    @classmethod
    def from_size(cls, size: str, **overrides) -> DiTConfig:
        """A named size (``"S"``, ``"B"``, ``"L"``, ``"XL"``) with any other field overridden."""
        if size not in DIT_SIZES:
            raise ConfigError(f"unknown DiT size {size!r} (known: {', '.join(DIT_SIZES)})")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"DiTConfig: unknown field {unknown[0]!r}")
        return replace(cls(), **{**DIT_SIZES[size], **overrides})


# ---------------------------------------------------------------------------------------------------------
# Position and time embeddings
# ---------------------------------------------------------------------------------------------------------


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin | cos] embedding of positions [M] with ``dim`` channels and max period 10000, in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [grid_size**2, dim] for row-major tokens.

    The first half of the channels encodes the column, the second half the row: the MAE/DiT layout that the
    public checkpoints' stored ``pos_embed`` follows.
    """
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([sincos_1d(cols.flatten(), dim // 2), sincos_1d(rows.flatten(), dim // 2)], dim=1)
    return emb.float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] embedding of times t [B] -> [B, dim].

    SVG feeds raw t in [0, 1] (no x1000 as in DDPM-style DiT), so the lowest frequencies barely move; the
    MLP that follows learns to use the fast ones. Computed in float32 like the public code, for parity.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None].float() * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepEmbedder(nn.Module):
    """t [B] -> [B, hidden] through a sinusoidal embedding and a 2-layer SiLU MLP (``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_size).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels [B] -> [B, hidden]; row ``num_classes`` of the table is the null class used for CFG.

    Label dropout is not drawn here: the caller passes ``drop`` (drawn from its own generator, see
    :func:`.flow.draw_flow_inputs`) so a step's randomness is reproducible and independent of the world size.
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


# ---------------------------------------------------------------------------------------------------------
# 2-D rotary position embedding (axial: half of each head's channels rotate with the row, half with the column)
# ---------------------------------------------------------------------------------------------------------


def rope_2d(grid_size: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [grid_size**2, head_dim] for :func:`apply_rope` on row-major tokens."""
    quarter = head_dim // 4
    freqs = 1.0 / base ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    # Per axis, each frequency appears twice (rotate-half pairs channel j with j + quarter).
    angles = torch.cat([rows.flatten()[:, None] * freqs, cols.flatten()[:, None] * freqs], dim=1)
    angles = torch.cat([angles[:, :quarter], angles[:, :quarter], angles[:, quarter:], angles[:, quarter:]], dim=1)
    return angles.cos().float(), angles.sin().float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, T, head_dim]: the first half of the channels by row angles, the second by column."""
    row_part, col_part = x.chunk(2, dim=-1)
    row_cos, col_cos = cos.to(x.dtype).chunk(2, dim=-1)
    row_sin, col_sin = sin.to(x.dtype).chunk(2, dim=-1)
    row_part = row_part * row_cos + _rotate_half(row_part) * row_sin
    col_part = col_part * col_cos + _rotate_half(col_part) * col_sin
    return torch.cat([row_part, col_part], dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Transformer blocks
# ---------------------------------------------------------------------------------------------------------


def block_norm(config: DiTConfig, dim: int) -> nn.Module:
    """Pre-norm of a block or of the final layer: no affine parameters, adaLN supplies scale and shift."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6, elementwise_affine=False)
    return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)


def qk_norm(config: DiTConfig) -> nn.Module:
    """Norm over the head dimension of q and k (affine, eps 1e-5 like the public LayerNorm default)."""
    if not config.qk_norm:
        return nn.Identity()
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.head_dim, eps=1e-5)
    return nn.LayerNorm(config.head_dim, eps=1e-5)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-sample affine [B, D] applied to every token of x [B, T, D]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.q_norm = qk_norm(config)
        self.k_norm = qk_norm(config)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, T, head_dim]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class GeluMLP(nn.Module):
    """The DiT MLP: fc1 -> tanh GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """SiLU-gated MLP w3(silu(w1 x) * w2 x); hidden width 2/3 of the GELU MLP's to keep the parameter count."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = int(2 * hidden / 3)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class DiTBlock(nn.Module):
    """x + gate * attn(modulate(norm(x))), then the same for the MLP; 6 modulation vectors from the condition."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.hidden_size
        mlp_hidden = int(dim * config.mlp_ratio)
        self.norm1 = block_norm(config, dim)
        self.attn = Attention(config)
        self.norm2 = block_norm(config, dim)
        self.mlp = SwiGLU(dim, mlp_hidden) if config.mlp == "swiglu" else GeluMLP(dim, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, config: DiTConfig, out_features: int):
        super().__init__()
        self.norm_final = block_norm(config, config.hidden_size)
        self.linear = nn.Linear(config.hidden_size, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden_size, 2 * config.hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Class-conditional velocity model v(x_t, t, y) over latents [B, C, H, W]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        p, dim = config.patch_size, config.hidden_size
        self.out_channels = 2 * config.in_channels if config.learn_sigma else config.in_channels

        self.ln1 = nn.Linear(p * p * config.in_channels, dim)  # the input Linear (public key name)
        self.register_buffer("pos_embed", sincos_2d(config.grid_size, dim).unsqueeze(0))
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(config.num_classes, dim)
        # Created only when switched on, so that the state dict of a model without them stays as it was.
        if config.interval_input:
            self.interval_embedder = TimestepEmbedder(dim)
        if config.guidance_input:
            self.guidance_embedder = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList([DiTBlock(config) for _ in range(config.depth)])
        self.final_layer = FinalLayer(config, p * p * self.out_channels)
        if config.rope:
            cos, sin = rope_2d(config.grid_size, config.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        """The label that means "no class" (unconditional branch of CFG, dropped labels in training)."""
        return self.config.num_classes

    def extra_embedders(self) -> list[TimestepEmbedder]:
        """The embedders of the optional MeanFlow inputs this model has (interval, guidance)."""
        return [getattr(self, name) for name in ("interval_embedder", "guidance_embedder") if hasattr(self, name)]

    def initialize_weights(self) -> None:
        """DiT initialization: Xavier linears, N(0, 0.02) embeddings, and adaLN-Zero.

        Every modulation Linear and the output Linear start at zero, so each block starts as the identity
        (gates are 0) and the initial model predicts exactly zero velocity. The output Linear of each MeanFlow
        embedder starts at zero too: its input is then ignored until training moves it, which is what makes
        :func:`warm_start_mean_flow` exact.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero_init = [block.adaLN_modulation[-1] for block in self.blocks]
        zero_init += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for embedder in self.extra_embedders():
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            zero_init.append(embedder.mlp[2])
        for linear in zero_init:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> row-major tokens [B, T, p*p*C] (for p = 1 simply the C channels of each position)."""
        b, c, h, w = x.shape
        p = self.config.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, p*p*C_out] -> [B, C_out, H, W] (inverse of :meth:`patchify`)."""
        b = tokens.shape[0]
        p, grid = self.config.patch_size, self.config.grid_size
        x = tokens.reshape(b, grid, grid, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, self.out_channels, grid * p, grid * p)

    def condition(self, t: torch.Tensor, y: torch.Tensor, drop: torch.Tensor | None, r: torch.Tensor | None,
                  guidance: torch.Tensor | None) -> torch.Tensor:
        """The adaLN condition [B, hidden]: embeddings of t and the label, plus those of the MeanFlow inputs.

        The interval enters as its length r - t rather than as r: "r = t" (the instantaneous velocity, which
        most MeanFlow training samples and a warm start are about) is then the one input 0 whatever t is,
        instead of a diagonal the network would have to find in two embeddings. The MeanFlow paper found
        these embedding choices close to each other. The guidance scale enters as w - 1, 0 when unguided.
        """
        cfg = self.config
        if r is not None and not cfg.interval_input:
            raise SVGError("this DiT has no interval input (DiTConfig.interval_input): it cannot take r")
        if guidance is not None and not cfg.guidance_input:
            raise SVGError("this DiT has no guidance input (DiTConfig.guidance_input): it cannot take a guidance scale")
        c = self.t_embedder(t) + self.y_embedder(y, drop)
        if cfg.interval_input:
            c = c + self.interval_embedder(torch.zeros_like(t) if r is None else r - t)
        if cfg.guidance_input:
            c = c + self.guidance_embedder(torch.zeros_like(t) if guidance is None else guidance - 1)
        return c

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, drop: torch.Tensor | None = None,
                r: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity [B, C, H, W] at latents x [B, C, H, W], times t [B] in [0, 1], labels y [B].

        ``drop`` [B] bool (training only) replaces the marked labels by the null class (CFG label dropout).
        With ``interval_input``, ``r`` [B] is the interval's other end and the output is the average velocity
        (z_r - z_t) / (r - t) along the flow (:mod:`.mean_flow`); ``r=None`` means r = t, the instantaneous
        velocity, so such a model also runs in every flow-matching sampler. With ``guidance_input``,
        ``guidance`` [B] is the guidance scale w the model was trained to apply (None: w = 1).
        """
        cfg = self.config
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise SVGError(f"DiT input: expected latents [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        tokens = self.ln1(self.patchify(x)) + self.pos_embed
        c = self.condition(t, y, drop, r, guidance)
        rope = (self.rope_cos, self.rope_sin) if cfg.rope else None
        for block in self.blocks:
            tokens = block(tokens, c, rope)
        out = self.unpatchify(self.final_layer(tokens, c))
        return out[:, : cfg.in_channels]  # with learn_sigma the second half is an unused variance head

    def save_pretrained(self, folder: str | Path, parameter_dtype: torch.dtype | None = None) -> Path:
        """Write ``folder/config.json`` + ``folder/model.safetensors`` (atomically each), the parameters as
        ``parameter_dtype`` if given (see ``utils.pretrained.stored_state``)."""
        return write_pretrained(folder, FORMAT, self.config, stored_state(self, parameter_dtype))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> DiT:
        """Load a folder written by :meth:`save_pretrained` (on the CPU, in eval mode)."""
        return load_pretrained(cls, folder, FORMAT, DiTConfig, "the transformer")


def warm_start_mean_flow(model: DiT, guidance_input: bool = False) -> DiT:
    """A MeanFlow DiT (``interval_input``, and ``guidance_input`` if asked) holding every weight of ``model``.

    The embedders it adds are initialized as in a new model, with a zero output Linear, so at r = t (and any
    guidance scale) the result computes exactly what ``model`` computes: fine-tuning a trained flow-matching
    model into a one-step model starts from the flow-matching model itself (the cheap path, MF-RAE). It
    lands on ``model``'s device and dtype, in ``model``'s train/eval mode; ``model`` is left as it is.
    """
    config = replace(model.config, interval_input=True, guidance_input=guidance_input or model.config.guidance_input)
    parameter = next(model.parameters())
    warm = DiT(config).to(device=parameter.device, dtype=parameter.dtype).train(model.training)
    missing, unexpected = warm.load_state_dict(model.state_dict(), strict=False)
    new = {name for name in warm.state_dict() if name.startswith(("interval_embedder.", "guidance_embedder."))}
    if unexpected or not set(missing) <= new:
        raise SVGError(f"warm start: the model's weights do not fit (missing {missing}, unexpected {unexpected})")
    return warm


def compile_for_sampling(model: DiT) -> FrozenCompiledDiT:
    """``torch.compile`` of a model for sampling; its outputs equal the eager model's to fp32 tolerance.

    Inductor's ``freezing`` folds the weights into the compiled graph as constants and pre-packs the Linear
    weights, so call the result only under ``torch.no_grad``/``torch.inference_mode`` (samplers do) and do
    not change the weights afterwards (compile again). On the CPU the batch dimension is compiled dynamic:
    one graph serves the conditional, the CFG-doubled and any other batch size, and inductor then packs fp32
    Linear weights for oneDNN instead of MKL, which is about 2x faster on the AMD CPU we measured
    (docs/results.md, "Speed"). Compilation happens on the first call (minutes for XL on a CPU).
    """
    return FrozenCompiledDiT(model)


class FrozenCompiledDiT(nn.Module):
    """A DiT compiled with frozen weights (see :func:`compile_for_sampling`), called like the DiT."""

    def __init__(self, model: DiT):
        super().__init__()
        on_cpu = next(model.parameters()).device.type == "cpu"
        self.compiled = torch.compile(model, dynamic=on_cpu)

    @property
    def config(self) -> DiTConfig:
        return self.compiled.config

    @property
    def null_class(self) -> int:
        return self.compiled.null_class

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, r: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        from torch._inductor import config as inductor_config  # seconds to import: only where compiling

        # Dynamo reads ``freezing`` while it traces, i.e. during a call: torch.compile(options=...) is too early.
        with inductor_config.patch(freezing=True):
            return self.compiled(x, t, y, r=r, guidance=guidance)
