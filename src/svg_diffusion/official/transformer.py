"""The public diffusion transformer: ``{"ema": state_dict}``, ``{"model": state_dict}`` or a bare state dict,
and optionally its training YAML (``model.params``, ``basic.feature_norm``).

Its key names are ours; its final Linear's second ``learn_sigma`` half is dropped. The number of heads is not
stored: it comes from the YAML or, for the standard DiT widths, from ``PUBLIC_DIT_HEADS``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..config import from_dict, load_yaml
from ..diffusion import DiT, DiTConfig
from ..errors import SVGError
from ..utils.checks import check_number
from ..utils.pretrained import load_state_dict_strict
from .files import load_public_file, section, tensor_dict

# Heads of the public transformer are not stored in its checkpoint; its YAML or this table (DiT sizes) gives them.
PUBLIC_DIT_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}


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
        # 0 would leave the model without a null class for guidance
        check_number("class_dropout_prob", self.class_dropout_prob, above=0, at_most=1)


def read_transformer_state(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """A public transformer's weights: the EMA of ``{"ema": ...}``, else ``{"model": ...}``, else the file itself.

    A ``module.`` prefix on every key (a model saved from inside DistributedDataParallel) is removed.
    """
    data = load_public_file(path, "transformer checkpoint", trust_pickle)
    if isinstance(data, dict):
        data = data.get("ema", data.get("model", data))
    state = tensor_dict(data, path, "{'ema': state_dict}, {'model': state_dict} or a state dict of tensors")
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


def transformer_from_public(checkpoint: str | Path, config_path: str | Path | None = None,
                            trust_pickle: bool = False) -> tuple[DiT, bool | None]:
    """Our DiT (eval mode) with a public transformer's weights, and its YAML's ``basic.feature_norm``
    (whether it was trained on normalized latents; None without a YAML)."""
    source = str(checkpoint)
    state = read_transformer_state(checkpoint, trust_pickle)
    if config_path is None:
        where, params, feature_norm = source, PublicDiTParams(), None
    else:
        where, yaml_data = str(config_path), load_yaml(config_path)
        params = from_dict(PublicDiTParams, section(yaml_data, "model.params", where), f"{where}: model.params")
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
