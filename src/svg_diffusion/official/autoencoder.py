"""The public autoencoder: a PyTorch-Lightning ``.ckpt`` (or its bare ``state_dict``) + the YAML it was trained with.

In the checkpoint, ``encoder.*`` is Meta's DINOv3 (our key names), ``extra_vit.*`` a torchvision ViT (class
token, fused ``in_proj`` attention), ``mask_token`` [1, C, 1], ``decoder.*`` the LDM decoder (our key names);
``loss.*`` (LPIPS + discriminator) and the unused ``norm_vit`` are dropped. The YAML gives the decoder
(``model.params.ddconfig``), the DINOv3 name (``dinoconfig``) and the residual branch (``extra_vit_config``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..autoencoder import AutoencoderConfig, DecoderConfig, ResidualEncoderConfig, SVGAutoencoder
from ..config import from_dict, load_yaml
from ..encoders import FrozenEncoder, VisionTransformer, get_config, load_vit, load_vit_state
from ..errors import SVGError
from ..utils.pretrained import check_keys_and_shapes, check_state_dict
from .files import key_rules, load_public_file, public_key, section, tensor_dict

# The residual ViT's heads are fixed in the public code (create_small_vit_s), not in any file.
PUBLIC_RESIDUAL_HEADS = 8

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


def read_autoencoder_state(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The state dict of a public autoencoder: a Lightning checkpoint's ``state_dict``, or a bare state dict."""
    data = load_public_file(path, "autoencoder checkpoint", trust_pickle)
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    return tensor_dict(data, path, "a Lightning checkpoint with a 'state_dict', or a state dict of tensors")


def autoencoder_config_from_public(yaml_data: dict, state: dict[str, Tensor], where: str,
                                   source: str) -> AutoencoderConfig:
    """Our AutoencoderConfig for a public YAML + checkpoint.

    The decoder comes from ``model.params.ddconfig``, the DINOv3 architecture from ``dinoconfig.model_name``,
    the residual ViT's channels, masking and alignment from ``extra_vit_config``, and its depth, width, MLP
    width and position grid from the checkpoint (the public code fixes them in code, not in the YAML).
    Other keys (losses, data, trainer) concern training and are not read.
    """
    params = section(yaml_data, "model.params", where)
    decoder = from_dict(PublicDecoderConfig, section(yaml_data, "model.params.ddconfig", where),
                        f"{where}: model.params.ddconfig")
    dino = from_dict(PublicDinoConfig, section(yaml_data, "model.params.dinoconfig", where),
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


def autoencoder_from_public(checkpoint: str | Path, config_path: str | Path, dinov3: str | Path | None = None,
                            trust_pickle: bool = False) -> SVGAutoencoder:
    """Our SVGAutoencoder (eval mode) with the weights of a public autoencoder checkpoint + YAML."""
    source, where = str(checkpoint), str(config_path)
    state = read_autoencoder_state(checkpoint, trust_pickle)
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
