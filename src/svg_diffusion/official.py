"""Reading the public SVG release into our pipeline folder (``svg-diffusion convert-official``).

The public code (github shiml20/SVG, weights on the Hugging Face repo howlin/SVG) ships four kinds of file
(SPEC §4); each is read with ``torch.load(weights_only=True)`` only, so no file can run code:

- the autoencoder: a PyTorch-Lightning ``.ckpt`` (or its bare ``state_dict``) + the YAML it was trained
  with. ``encoder.*`` is Meta's DINOv3 (our key names), ``extra_vit.*`` a torchvision ViT (class token,
  fused ``in_proj`` attention), ``mask_token`` [1, C, 1], ``decoder.*`` the LDM decoder (our key names);
  ``loss.*`` (LPIPS + discriminator) and the unused ``norm_vit`` are dropped.
- the diffusion transformer: ``{"ema": state_dict}``, ``{"model": state_dict}`` or a bare state dict, and
  optionally its YAML. Its key names are ours; its final Linear's second ``learn_sigma`` half is dropped.
- the latent statistics ``dinov3_sp_stats.pt`` (per-channel mean/std [1, 1, C'] of the token layout).
- Meta's DINOv3 ``.pth`` (or a Hugging Face DINOv3 folder).

Every key is accounted for: a key we do not know, a key the architecture needs but the file lacks, or a
shape that does not fit the YAML raises SVGError naming the keys in the public file's own names.

Conventions carried over, so the converted pipeline computes what the public code computes (SPEC §4b):

- Images: the public model takes ImageNet-normalized images; ours takes [-1, 1] images and normalizes
  them itself (the same affine map, folded into one multiply-add).
- Alignment: ``use_outnorm: true`` is the public batch-statistics alignment, so the converted autoencoder
  uses alignment mode ``batch`` (a latent then depends on its batch, as in the public code). To get
  batch-independent latents, estimate running statistics (``estimate_alignment_statistics``) and switch
  ``autoencoder.alignment.mode`` to ``"running"``. ``use_outnorm: false`` (or absent) is mode ``none``.
- Latent normalization: the public training divides the token-layout latent by the statistics file when
  its YAML says ``basic.feature_norm: true`` (``(z - mean) / std``; sampling multiplies back), using the
  first C channels of the file. Our pipeline always applies ``latent_stats``; a model trained without
  ``feature_norm`` gets mean 0 / std 1.
- Tokens: the public transformer takes ``[B, T, C]`` = ``z.flatten(2).transpose(1, 2)``; ours takes
  ``[B, C, h, w]``. Public noise ``n`` [B, T, C] is our ``n.transpose(1, 2).reshape(B, C, h, w)``.
- Time grid: :func:`public_time_grid` is the public sampler's (float32 linspace, shifted in float64); our
  ``time_grid`` differs from it by at most one float32 ulp per point (see docs/official.md).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .autoencoder import AutoencoderConfig, DecoderConfig, ResidualEncoderConfig, SVGAutoencoder
from .config import from_dict, load_yaml
from .diffusion import DiT, DiTConfig
from .diffusion.latents import LatentStatistics
from .encoders import FrozenEncoder, VisionTransformer, get_config, load_vit, load_vit_state
from .errors import SVGError
from .pipeline import SVGPipeline
from .utils.pretrained import check_keys_and_shapes, check_state_dict, load_state_dict_strict

# Heads of the public transformer are not stored in its checkpoint; its YAML or this table (DiT sizes) gives them.
PUBLIC_DIT_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}
# The residual ViT's heads are fixed in the public code (create_small_vit_s), not in any file.
PUBLIC_RESIDUAL_HEADS = 8

# ------------------------------------------------------------------------------------------ foreign files


def load_public_file(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise SVGError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if unsafe:
            raise SVGError(f"{path}: holds a {unsafe[1]!r} object, which only an unsafe (code-running) load could "
                           "read; save its state dict alone with torch.save where you trust the file") from None
        raise SVGError(f"{path}: not a readable PyTorch file") from None
    except Exception as err:  # torch raises many types for a corrupt file
        raise SVGError(f"{path}: not a readable PyTorch file ({str(err).splitlines()[0]})") from None


def _tensor_dict(value: Any, path: str | Path, what: str) -> dict[str, Tensor]:
    if not isinstance(value, dict) or not value or not all(isinstance(v, Tensor) for v in value.values()):
        raise SVGError(f"{path}: expected {what}")
    return dict(value)


def _section(data: Any, dotted: str, where: str) -> dict:
    """The mapping at ``dotted`` (e.g. "model.params") of a YAML document; SVGError naming it if absent."""
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            raise SVGError(f"{where}: {dotted} is missing (expected the public SVG config layout)")
        node = node[part]
    return node


def key_rules(pairs: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    """Compile renaming rules ``(public, ours)`` into (pattern on our key, public template) pairs.

    ``{}`` in a rule stands for a block index; a rule ending in "." renames a prefix.
    """
    compiled = []
    for public, ours in pairs:
        pattern = r"(\d+)".join(re.escape(part) for part in ours.split("{}"))
        if ours.endswith("."):
            pattern, public = pattern + "(.+)", public + "{}"
        compiled.append((re.compile(pattern), public))
    return compiled


def public_key(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    """The public name of our ``key``; None when it has none (an entry only our model has)."""
    for pattern, public in rules:
        match = pattern.fullmatch(key)
        if match:
            return public.format(*match.groups())
    return None


# ------------------------------------------------------------------------------------------- autoencoder

# Public autoencoder keys -> our SVGAutoencoder keys (the frozen encoder's are handled on their own).
AUTOENCODER_KEYS = key_rules([
    ("extra_vit.class_token", "residual.vit.cls_token"),
    ("extra_vit.conv_proj.", "residual.vit.patch_embed.proj."),
    ("extra_vit.encoder.pos_embedding", "residual.vit.pos_embed"),
    ("extra_vit.encoder.layers.encoder_layer_{}.ln_1.", "residual.vit.blocks.{}.norm1."),
    ("extra_vit.encoder.layers.encoder_layer_{}.self_attention.in_proj_weight", "residual.vit.blocks.{}.attn.qkv.weight"),
    ("extra_vit.encoder.layers.encoder_layer_{}.self_attention.in_proj_bias", "residual.vit.blocks.{}.attn.qkv.bias"),
    ("extra_vit.encoder.layers.encoder_layer_{}.self_attention.out_proj.", "residual.vit.blocks.{}.attn.proj."),
    ("extra_vit.encoder.layers.encoder_layer_{}.ln_2.", "residual.vit.blocks.{}.norm2."),
    ("extra_vit.encoder.layers.encoder_layer_{}.mlp.0.", "residual.vit.blocks.{}.mlp.fc1."),
    ("extra_vit.encoder.layers.encoder_layer_{}.mlp.3.", "residual.vit.blocks.{}.mlp.fc2."),
    ("extra_vit.encoder.ln.", "residual.vit.norm."),
    ("extra_vit.heads.", "residual.head."),
    ("mask_token", "residual.mask_token"),
    ("decoder.", "decoder."),
])
# Public entries with no use at inference: the training losses and a LayerNorm the public model never calls.
IGNORED_AUTOENCODER_PREFIXES = ("loss.", "norm_vit.")
ENCODER_PREFIX = "encoder."


@dataclass
class PublicDecoderConfig:
    """``model.params.ddconfig`` of a public autoencoder YAML: the LDM ``Decoder``'s arguments."""

    ch: int
    out_ch: int
    num_res_blocks: int
    attn_resolutions: list[int]
    resolution: int
    z_channels: int
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # the LDM default
    in_channels: int = 3  # the LDM encoder's input; the decoder ignores it
    double_z: bool = True  # the LDM encoder's; the decoder ignores it
    dropout: float = 0.0  # training only
    # Switches our decoder has no equivalent for: only the value the SVG models use is accepted.
    resamp_with_conv: bool = True
    give_pre_end: bool = False
    tanh_out: bool = False
    use_linear_attn: bool = False
    attn_type: str = "vanilla"

    def __post_init__(self) -> None:
        supported = {"resamp_with_conv": True, "give_pre_end": False, "tanh_out": False, "use_linear_attn": False,
                     "attn_type": "vanilla"}
        for name, value in supported.items():
            if getattr(self, name) != value:
                raise ValueError(f"{name}: only {value!r} is supported, got {getattr(self, name)!r}")

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(z_channels=self.z_channels, resolution=self.resolution, ch=self.ch,
                             ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                             attn_resolutions=tuple(self.attn_resolutions), out_ch=self.out_ch)


@dataclass
class PublicResidualConfig:
    """``model.params.extra_vit_config``: the residual branch's channels, masking and alignment switch."""

    output_dim: int
    mask_ratio: float = 0.0
    use_outnorm: bool = False


@dataclass
class PublicDinoConfig:
    """``model.params.dinoconfig``: which DINOv3 (the paths are the authors' machines' and are not used)."""

    model_name: str
    dinov3_location: str | None = None
    weights: str | None = None


def read_autoencoder_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a public autoencoder: a Lightning checkpoint's ``state_dict``, or a bare state dict."""
    data = load_public_file(path, "autoencoder checkpoint")
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    return _tensor_dict(data, path, "a Lightning checkpoint with a 'state_dict', or a state dict of tensors")


def autoencoder_config_from_public(yaml_data: dict, state: dict[str, Tensor], where: str,
                                   source: str) -> AutoencoderConfig:
    """Our AutoencoderConfig for a public YAML + checkpoint.

    The decoder comes from ``model.params.ddconfig``, the DINOv3 architecture from ``dinoconfig.model_name``,
    the residual ViT's channels, masking and alignment from ``extra_vit_config``, and its depth, width, MLP
    width and position grid from the checkpoint (the public code fixes them in code, not in the YAML).
    Other keys (losses, data, trainer) concern training and are not read.
    """
    params = _section(yaml_data, "model.params", where)
    decoder = from_dict(PublicDecoderConfig, _section(yaml_data, "model.params.ddconfig", where),
                        f"{where}: model.params.ddconfig")
    dino = from_dict(PublicDinoConfig, _section(yaml_data, "model.params.dinoconfig", where),
                     f"{where}: model.params.dinoconfig")
    if params.get("extra_vit_config") is None:  # the encoder-only model: the latent is the DINOv3 features alone
        residual, alignment, mask_prob = ResidualEncoderConfig(channels=0), "none", 0.0
    else:
        extra = from_dict(PublicResidualConfig, params["extra_vit_config"], f"{where}: model.params.extra_vit_config")
        residual = _residual_config_from_state(state, extra.output_dim, source)
        alignment, mask_prob = ("batch" if extra.use_outnorm else "none"), extra.mask_ratio
    try:
        return AutoencoderConfig(encoder=dino.model_name, image_size=decoder.resolution, residual=residual,
                                 decoder=decoder.decoder_config(), alignment=alignment, mask_prob=mask_prob)
    except ValueError as err:
        raise SVGError(f"{where}: {err}") from None


def _residual_config_from_state(state: dict[str, Tensor], channels: int, source: str) -> ResidualEncoderConfig:
    def need(key: str) -> Tensor:
        if key not in state:
            raise SVGError(f"{source}: missing key {key} (the residual ViT of extra_vit_config)")
        return state[key]

    width = need("extra_vit.conv_proj.weight").shape[0]
    layers = {int(m[1]) for key in state if (m := re.match(r"extra_vit\.encoder\.layers\.encoder_layer_(\d+)\.", key))}
    mlp_dim = need("extra_vit.encoder.layers.encoder_layer_0.mlp.0.weight").shape[0]
    try:
        return ResidualEncoderConfig(channels=channels, depth=max(layers) + 1, width=width,
                                     num_heads=PUBLIC_RESIDUAL_HEADS, mlp_dim=mlp_dim)
    except ValueError as err:
        raise SVGError(f"{source}: residual ViT: {err}") from None


def _frozen_encoder(name: str, encoder_state: dict[str, Tensor], dinov3: str | Path | None,
                    source: str) -> FrozenEncoder:
    """The DINOv3 encoder: from ``dinov3`` when given (and then checked against the checkpoint's copy)."""
    if dinov3 is None:
        if not encoder_state:
            raise SVGError(f"{source} holds no encoder.* weights: pass the DINOv3 weights (--dinov3)")
        vit = VisionTransformer(get_config(name))
        load_vit_state(vit, encoder_state, f"{source} (encoder.*)")
        return FrozenEncoder(vit)
    vit = load_vit(name, weights=dinov3)
    if encoder_state:
        check_state_dict(vit, encoder_state, f"{source} (encoder.*)", f"the {name} encoder")
        reference = vit.state_dict()
        for key, value in encoder_state.items():
            if not torch.equal(_effective(encoder_state, key, value), _effective(reference, key, reference[key])):
                raise SVGError(f"{source}: encoder.{key} differs from {dinov3}: the autoencoder was trained "
                               "on other DINOv3 weights")
    return FrozenEncoder(vit)


def _effective(state: dict[str, Tensor], key: str, value: Tensor) -> Tensor:
    """A qkv bias as the model uses it (times its k-zeroing mask): Meta stores a k bias, transformers none."""
    mask = state.get(key.removesuffix("bias") + "bias_mask") if key.endswith("qkv.bias") else None
    return value.float() if mask is None else value.float() * mask.float()


def autoencoder_from_public(checkpoint: str | Path, config_path: str | Path,
                            dinov3: str | Path | None = None) -> SVGAutoencoder:
    """Our SVGAutoencoder (eval mode) with the weights of a public autoencoder checkpoint + YAML."""
    source, where = str(checkpoint), str(config_path)
    state = read_autoencoder_state(checkpoint)
    config = autoencoder_config_from_public(load_yaml(config_path), state, where, source)
    encoder_state = {k.removeprefix(ENCODER_PREFIX): v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    model = SVGAutoencoder(config, _frozen_encoder(config.encoder, encoder_state, dinov3, source))

    ours = model._trained_modules().state_dict()
    public_names = {key: public_key(key, AUTOENCODER_KEYS) for key in ours}
    # The public mask token is [1, C, 1] (tokens), ours [1, C, 1, 1] (maps).
    expected = {public: ours[key].shape[:3] if public == "mask_token" else ours[key].shape
                for key, public in public_names.items() if public is not None}
    if config.mask_prob == 0.0:
        expected.pop("mask_token", None)  # the public model creates it only for mask_ratio > 0
    public = {k: v for k, v in state.items()
              if not k.startswith(ENCODER_PREFIX) and not k.startswith(IGNORED_AUTOENCODER_PREFIXES)}
    check_keys_and_shapes(public, expected, source, f"the autoencoder of {where}")
    for key, name in public_names.items():
        if name in public:
            ours[key] = public[name].reshape(ours[key].shape).float()
    # Ours-only entries keep their fresh values: the alignment statistics (unused in modes batch and none),
    # the residual ViT's iBOT mask token (unused) and, for mask_ratio 0, the residual mask token (unused).
    model._trained_modules().load_state_dict(ours)
    return model.eval()


# ------------------------------------------------------------------------------------------- transformer


@dataclass
class PublicDiTParams:
    """``model.params`` of a public transformer YAML. None means not given: the checkpoint's shapes decide;
    a value that is given must agree with them."""

    input_size: int | None = None
    in_channels: int | None = None
    hidden_size: int | None = None
    depth: int | None = None
    num_heads: int | None = None  # not stored in the checkpoint: from here or from PUBLIC_DIT_HEADS
    mlp_ratio: float | None = None
    num_classes: int | None = None
    learn_sigma: bool | None = None
    qk_norm: bool | None = None
    head_dim: int | None = None
    patch_size: int = 1
    use_swiglu: bool = False
    class_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.patch_size != 1:
            raise ValueError(f"patch_size must be 1 (one token per latent position), got {self.patch_size}")
        if self.use_swiglu:
            raise ValueError("use_swiglu (the public MoE MLP) is not supported")
        if self.class_dropout_prob <= 0:
            raise ValueError("class_dropout_prob 0 leaves the model without a null class for guidance")


def read_transformer_state(path: str | Path) -> dict[str, Tensor]:
    """A public transformer's weights: the EMA of ``{"ema": ...}``, else ``{"model": ...}``, else the file itself.

    A ``module.`` prefix on every key (a model saved from inside DistributedDataParallel) is removed.
    """
    data = load_public_file(path, "transformer checkpoint")
    if isinstance(data, dict):
        data = data.get("ema", data.get("model", data))
    state = _tensor_dict(data, path, "{'ema': state_dict}, {'model': state_dict} or a state dict of tensors")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def transformer_config_from_public(state: dict[str, Tensor], params: PublicDiTParams, source: str,
                                   where: str) -> tuple[DiTConfig, bool]:
    """Our DiTConfig for a public transformer state dict, and whether the file has the ``learn_sigma`` half."""
    for key in ("ln1.weight", "pos_embed", "y_embedder.embedding_table.weight", "final_layer.linear.weight",
                "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise SVGError(f"{source}: missing key {key} (not a public SVG transformer?)")
    hidden, in_channels = state["ln1.weight"].shape
    tokens, outputs = state["pos_embed"].shape[-2], state["final_layer.linear.weight"].shape[0]
    mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    grid = math.isqrt(tokens)
    if grid * grid != tokens or outputs not in (in_channels, 2 * in_channels):
        raise SVGError(f"{source}: not a public SVG transformer with patch size 1 "
                       f"(pos_embed {tuple(state['pos_embed'].shape)}, {outputs} outputs for {in_channels} channels)")
    found = {
        "input_size": grid, "in_channels": in_channels, "hidden_size": hidden,
        "depth": 1 + max(int(m[1]) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))),
        "num_classes": state["y_embedder.embedding_table.weight"].shape[0] - 1,  # the last row is the null class
        "learn_sigma": outputs == 2 * in_channels, "qk_norm": "blocks.0.attn.q_norm.weight" in state,
    }
    for key, value in found.items():
        if getattr(params, key) not in (None, value):
            raise SVGError(f"{where}: model.params.{key} is {getattr(params, key)!r} but {source} has {value!r}")
    num_heads = params.num_heads or PUBLIC_DIT_HEADS.get(hidden)
    if num_heads is None:
        raise SVGError(f"{source}: the number of heads is not stored and width {hidden} is not a standard DiT "
                       f"width ({', '.join(map(str, PUBLIC_DIT_HEADS))}): give a YAML with model.params.num_heads")
    if params.head_dim not in (None, hidden // num_heads):
        raise SVGError(f"{where}: model.params.head_dim {params.head_dim} is not hidden_size / num_heads")
    mlp_ratio = params.mlp_ratio or mlp_hidden / hidden
    if int(hidden * mlp_ratio) != mlp_hidden:
        raise SVGError(f"{where}: model.params.mlp_ratio {mlp_ratio} does not give {source}'s MLP width {mlp_hidden}")
    try:
        config = DiTConfig(in_channels=in_channels, input_size=grid, patch_size=1, hidden_size=hidden,
                           depth=found["depth"], num_heads=num_heads, mlp_ratio=mlp_ratio,
                           num_classes=found["num_classes"], learn_sigma=False, qk_norm=found["qk_norm"])
    except ValueError as err:
        raise SVGError(f"{where}: {err}") from None
    return config, found["learn_sigma"]


def transformer_from_public(checkpoint: str | Path, config_path: str | Path | None = None) -> tuple[DiT, bool | None]:
    """Our DiT (eval mode) with a public transformer's weights, and its YAML's ``basic.feature_norm``
    (whether it was trained on normalized latents; None without a YAML)."""
    source = str(checkpoint)
    state = read_transformer_state(checkpoint)
    if config_path is None:
        where, params, feature_norm = source, PublicDiTParams(), None
    else:
        where, yaml_data = str(config_path), load_yaml(config_path)
        params = from_dict(PublicDiTParams, _section(yaml_data, "model.params", where), f"{where}: model.params")
        basic = yaml_data.get("basic") if isinstance(yaml_data.get("basic"), dict) else {}
        feature_norm = bool(basic.get("feature_norm", False))  # the public code's default
    config, learn_sigma = transformer_config_from_public(state, params, source, where)
    if learn_sigma:  # keep the velocity half of the output Linear; the variance half is never used
        for key in ("final_layer.linear.weight", "final_layer.linear.bias"):
            if key in state:
                state[key] = state[key][: config.in_channels]
    model = DiT(config)
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, source,
                           f"a DiT of width {config.hidden_size} with {config.depth} blocks")
    return model.eval(), feature_norm


# -------------------------------------------------------------------------------------- latent statistics

PUBLIC_STATS_KEYS = ("dinov3_sp_mean", "dinov3_sp_std")


def read_public_stats(path: str | Path, channels: int) -> LatentStatistics:
    """``dinov3_sp_stats.pt`` as LatentStatistics of its first ``channels`` channels (as the public code slices)."""
    data = load_public_file(path, "statistics file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), Tensor) for k in PUBLIC_STATS_KEYS):
        raise SVGError(f"{path}: expected a dict with tensors {' and '.join(PUBLIC_STATS_KEYS)}")
    mean, std = (data[k].float().flatten() for k in PUBLIC_STATS_KEYS)
    if min(mean.numel(), std.numel()) < channels:
        raise SVGError(f"{path}: statistics of {min(mean.numel(), std.numel())} channels for a "
                       f"{channels}-channel latent")
    return LatentStatistics(mean[:channels], std[:channels])


def public_time_grid(num_steps: int, public_shift: float) -> Tensor:
    """The public sampler's time grid: ``linspace(0, 1, N + 1)`` in float32, each point shifted in float64 as
    ``s t / (1 + (s - 1) t)`` (public ``s``; our ``k`` = 1 / s), then float32.

    Our :func:`~svg_diffusion.diffusion.time_grid` takes the linspace in float64; the two differ by at most
    one float32 ulp per point. Pass this grid to a sampler to reproduce the public one exactly.
    """
    if num_steps < 1 or public_shift <= 0:
        raise SVGError(f"need at least 1 step and a positive shift, got {num_steps} steps and shift {public_shift}")
    t = torch.linspace(0, 1, num_steps + 1, dtype=torch.float32).double()
    return (public_shift * t / (1 + (public_shift - 1) * t)).float()


# -------------------------------------------------------------------------------------------- conversion


def convert_official(autoencoder: str | Path, autoencoder_config: str | Path, out: str | Path,
                     dinov3: str | Path | None = None, transformer: str | Path | None = None,
                     transformer_config: str | Path | None = None, stats: str | Path | None = None) -> Path:
    """Convert the public SVG files into one pipeline folder ``out`` and return its path.

    ``autoencoder`` + ``autoencoder_config``: the Lightning checkpoint and its YAML (required). ``dinov3``:
    Meta's DINOv3 ``.pth`` (or a Hugging Face folder); needed when the checkpoint has no ``encoder.*``
    copy, and checked against it otherwise. ``transformer`` (+ optional ``transformer_config``) and
    ``stats``: the diffusion model and ``dinov3_sp_stats.pt``; without them the folder is an
    autoencoder-only pipeline. ``out`` must not exist or be empty; it appears complete or not at all.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SVGError(f"output folder {out} already exists and is not empty")
    if transformer is None and (transformer_config is not None or stats is not None):
        raise SVGError("--transformer-config and --stats belong to a transformer: pass --transformer too")

    ae = autoencoder_from_public(autoencoder, autoencoder_config, dinov3)
    dit = latent_stats = None
    if transformer is not None:
        dit, feature_norm = transformer_from_public(transformer, transformer_config)
        if feature_norm is None:  # no YAML: statistics given means the model was trained on normalized latents
            feature_norm = stats is not None
        if feature_norm and stats is None:
            raise SVGError(f"{transformer_config} trains on normalized latents (basic.feature_norm): pass --stats")
        if feature_norm:
            latent_stats = read_public_stats(stats, ae.latent_channels)
        else:
            if stats is not None:
                warnings.warn(f"{transformer_config} has basic.feature_norm false: {stats} is not used", stacklevel=2)
            latent_stats = LatentStatistics(torch.zeros(ae.latent_channels), torch.ones(ae.latent_channels))
    pipeline = SVGPipeline(ae, dit, latent_stats)

    # Written beside ``out`` and renamed into place, so an interrupted conversion leaves no half folder.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the pipeline folder gets the usual permissions
    try:
        pipeline.save_pretrained(staging)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
