"""Weight files for the ViT: Meta's ``.pth``, Hugging Face transformers folders/files, and our own folder.

Every reader returns a state dict in our key names (which are Meta's), so one strict loader
(`load_vit_state`) checks every format the same way and names each key that does not fit.

- Meta ``.pth``: a flat state dict (``torch.load(weights_only=True)``); keys already ours.
- Hugging Face: ``config.json`` (+ optional ``preprocessor_config.json``) + ``model.safetensors`` of a
  ``DINOv3ViTModel``, ``Dinov2Model`` or ``Dinov2WithRegistersModel`` (current or legacy key names), or such
  a ``.safetensors`` file alone (the architecture then comes from the encoder name).
- Ours: ``config.json`` = {"format": FORMAT, "config": ViTConfig fields} + ``model.safetensors``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ..config import from_dict
from ..errors import SVGError
from ..utils.pretrained import (
    CONFIG_FILE, WEIGHTS_FILE, load_state_dict_strict, read_json, read_state_file, write_pretrained,
)
from .configs import ViTConfig, swiglu_hidden_dim
from .vit import VisionTransformer, rope_periods

FORMAT = "svg-diffusion-vit"
HF_PREPROCESSOR_FILE = "preprocessor_config.json"
HF_MODEL_TYPES = ("dinov3_vit", "dinov2", "dinov2_with_registers")


# ----------------------------------------------------------------------------------------- reading files


def read_folder(folder: str | Path) -> tuple[ViTConfig, dict[str, Tensor]]:
    """Config and state dict (our key names) of our folder or a Hugging Face folder."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise SVGError(f"{folder} is not an encoder folder: {path.name} is missing")
    meta = read_json(config_path)
    if meta.get("format") == FORMAT:
        return from_dict(ViTConfig, meta.get("config"), where=str(config_path)), read_state_file(weights_path)
    if meta.get("model_type") in HF_MODEL_TYPES:
        preprocessor_path = folder / HF_PREPROCESSOR_FILE
        preprocessor = read_json(preprocessor_path) if preprocessor_path.is_file() else {}
        cfg = config_from_hf(meta, preprocessor, where=str(config_path))
        return cfg, state_from_hf(read_state_file(weights_path), cfg)
    raise SVGError(
        f"{config_path}: neither our encoder format nor a Hugging Face model of type "
        f"{', '.join(HF_MODEL_TYPES)} (model_type={meta.get('model_type')!r})"
    )


def read_weights(weights: str | Path, cfg: ViTConfig) -> tuple[ViTConfig, dict[str, Tensor]]:
    """The state dict (our key names) in ``weights`` and the config it implies.

    A folder carries its own config; a lone file (Meta ``.pth``, a Hugging Face or our ``.safetensors``)
    is read for the architecture ``cfg``.
    """
    path = Path(weights)
    if path.is_dir():
        return read_folder(path)
    state = read_state_file(path)
    if any(key.startswith("embeddings.") for key in state):
        state = state_from_hf(state, cfg)
    return cfg, state


def write_folder(model: VisionTransformer, folder: str | Path) -> Path:
    """Save ``model`` as our folder format (config.json + model.safetensors), each file written atomically."""
    return write_pretrained(folder, FORMAT, model.config, model.state_dict())


# ------------------------------------------------------------------------------------ Hugging Face layout


def config_from_hf(hf: dict, preprocessor: dict, where: str) -> ViTConfig:
    """Our ViTConfig for a transformers ``config.json`` (DINOv3ViT, Dinov2, Dinov2WithRegisters).

    Missing fields take transformers' defaults. ``preprocessor`` (preprocessor_config.json) supplies
    image_mean/image_std when present.
    """
    model_type = hf.get("model_type")
    if hf.get("num_channels", 3) != 3:
        raise SVGError(f"{where}: only 3-channel models are supported, got num_channels={hf['num_channels']}")
    dim = hf.get("hidden_size", 384 if model_type == "dinov3_vit" else 768)
    fields = dict(
        embed_dim=dim,
        depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 6 if model_type == "dinov3_vit" else 12),
        patch_size=_square(hf.get("patch_size", 16 if model_type == "dinov3_vit" else 14), "patch_size", where),
        image_size=_square(hf.get("image_size", 224), "image_size", where),
        layerscale_init=hf.get("layerscale_value", 1.0),
        image_mean=tuple(preprocessor.get("image_mean", ViTConfig.image_mean)),
        image_std=tuple(preprocessor.get("image_std", ViTConfig.image_std)),
    )
    if model_type == "dinov3_vit":
        gated = hf.get("use_gated_mlp", False)
        _check_activation(hf.get("hidden_act", "gelu"), "silu" if gated else "gelu", where)
        query_bias, key_bias = hf.get("query_bias", True), hf.get("key_bias", False)
        if query_bias != hf.get("value_bias", True):
            raise SVGError(f"{where}: query_bias and value_bias differ; the fused qkv projection needs them equal")
        fields.update(
            ffn_layer="swiglu" if gated else "mlp", ffn_hidden_dim=hf.get("intermediate_size", 1536),
            qkv_bias=query_bias, mask_k_bias=query_bias and not key_bias, proj_bias=hf.get("proj_bias", True),
            ffn_bias=hf.get("mlp_bias", True), norm_eps=hf.get("layer_norm_eps", 1e-5),
            num_storage_tokens=hf.get("num_register_tokens", 0), position="rope",
            rope_base=hf.get("rope_theta", 100.0), rope_normalize_coords="separate",
        )
    else:
        gated = hf.get("use_swiglu_ffn", False)
        if not gated:  # the SwiGLU variant's activation is fixed to SiLU in transformers
            _check_activation(hf.get("hidden_act", "gelu"), "gelu", where)
        ratio = hf.get("mlp_ratio", 4)
        registers = model_type == "dinov2_with_registers"
        fields.update(
            ffn_layer="swiglu" if gated else "mlp",
            ffn_hidden_dim=swiglu_hidden_dim(dim, ratio) if gated else int(dim * ratio),
            qkv_bias=hf.get("qkv_bias", True), norm_eps=hf.get("layer_norm_eps", 1e-6),
            num_storage_tokens=hf.get("num_register_tokens", 4) if registers else 0, position="learned",
            # transformers resamples the position table to the exact grid; with antialiasing for registers.
            pos_embed_interp_offset=0.0, pos_embed_interp_antialias=registers,
        )
    try:
        return ViTConfig(**fields)
    except ValueError as err:
        raise SVGError(f"{where}: {err}") from None


def _square(value: int | list[int], name: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise SVGError(f"{where}: only square {name} is supported, got {value}")
        value = value[0]
    return int(value)


def _check_activation(found: str, expected: str, where: str) -> None:
    if found != expected:
        raise SVGError(f"{where}: hidden_act {found!r} is not supported for this FFN (expected {expected!r})")


# transformers' names inside a layer -> ours inside a block (module paths, without .weight/.bias)
_HF_BLOCK_MODULES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",  # legacy Dinov2 naming
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.gate_proj": "mlp.w1",
}
_HF_QKV_MODULES = {
    "attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2,
    "attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2,  # legacy
}
_HF_LAYER = re.compile(r"^(?:model\.|encoder\.)?layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def state_from_hf(hf_state: dict[str, Tensor], cfg: ViTConfig) -> dict[str, Tensor]:
    """Rename a transformers state dict to ours: split q/k/v fused into qkv, LayerScale ``lambda1`` ->
    ``gamma``, DINOv3's missing k bias filled with zeros plus the ``bias_mask`` and ``rope_embed.periods``
    buffers our model stores. Keys it does not recognize keep their name, so the loader reports them."""
    extra_tokens = "storage_tokens" if cfg.position == "rope" else "register_tokens"
    top_level = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.register_tokens": extra_tokens,
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "norm.weight": "norm.weight", "norm.bias": "norm.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    }
    block_modules = dict(_HF_BLOCK_MODULES)
    block_modules["mlp.up_proj"] = "mlp.w2" if cfg.ffn_layer == "swiglu" else "mlp.fc1"
    block_modules["mlp.down_proj"] = "mlp.w3" if cfg.ffn_layer == "swiglu" else "mlp.fc2"

    state: dict[str, Tensor] = {}
    qkv_parts: dict[int, dict[str, list]] = {}  # block -> leaf ("weight"/"bias") -> [q, k, v]
    qkv_sources: dict[int, list[str]] = {}
    for key, value in hf_state.items():
        if key in top_level:
            state[top_level[key]] = value
            continue
        match = _HF_LAYER.match(key)
        if match is None:
            state[key] = value
            continue
        block, module, leaf = int(match[1]), match[2], match[3]
        if leaf == "lambda1" and module in ("layer_scale1", "layer_scale2"):
            state[f"blocks.{block}.ls{module[-1]}.gamma"] = value
        elif module in block_modules:
            state[f"blocks.{block}.{block_modules[module]}.{leaf}"] = value
        elif module in _HF_QKV_MODULES:
            qkv_parts.setdefault(block, {}).setdefault(leaf, [None] * 3)[_HF_QKV_MODULES[module]] = value
            qkv_sources.setdefault(block, []).append(key)
        else:
            state[key] = value

    for block, parts in qkv_parts.items():
        fused = _fuse_qkv(parts, cfg)
        if fused is None:  # incomplete: leave the pieces under their own names for the error message
            state.update({key: hf_state[key] for key in qkv_sources[block]})
            continue
        state.update({f"blocks.{block}.attn.qkv.{leaf}": t for leaf, t in fused.items()})

    if cfg.num_storage_tokens == 0 and state.get(extra_tokens, torch.ones(1)).numel() == 0:
        del state[extra_tokens]  # transformers keeps an empty [1, 0, D] table; Meta has no parameter then
    if "mask_token" in state:  # DINOv3 in transformers stores it as [1, 1, D], Meta as [1, D]
        state["mask_token"] = state["mask_token"].reshape(1, -1)
    else:  # Dinov2Model(use_mask_token=False) has none; it is zero-initialized and unused at inference
        state["mask_token"] = torch.zeros(1, cfg.embed_dim)
    if cfg.position == "rope":
        state["rope_embed.periods"] = rope_periods(cfg.head_dim, cfg.rope_base)
    return state


def _fuse_qkv(parts: dict[str, list], cfg: ViTConfig) -> dict[str, Tensor] | None:
    weights = parts.get("weight", [None] * 3)
    if any(w is None for w in weights):
        return None
    fused = {"weight": torch.cat(weights)}
    if cfg.qkv_bias:
        biases = parts.get("bias", [None] * 3)
        if biases[1] is None and cfg.mask_k_bias:  # DINOv3: no k bias in transformers; Meta keeps a masked one
            biases[1] = torch.zeros_like(weights[1][:, 0])
        if any(b is None for b in biases):
            return None
        fused["bias"] = torch.cat(biases)
        if cfg.mask_k_bias:
            dim = cfg.embed_dim
            fused["bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    return fused


# ----------------------------------------------------------------------------------------- strict loading


def load_vit_state(model: VisionTransformer, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` exactly (``load_state_dict_strict``: every key, no extra, equal shapes).

    RoPE ``periods`` stored in a file must also equal the ones our config implies: a difference means the
    file was trained with another RoPE parametrization.
    """
    expected = model.state_dict()
    for key, periods in expected.items():
        stored = state.get(key)
        if (key.endswith("rope_embed.periods") and stored is not None and stored.shape == periods.shape
                and not torch.allclose(stored.float(), periods, rtol=1e-4)):
            raise SVGError(f"{source}: {key} differs from the periods of rope_base={model.config.rope_base}")
    load_state_dict_strict(model, state, source, "the encoder")
