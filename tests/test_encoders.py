"""The ViT and its formats: parity with transformers' DINOv3/DINOv2 on random weights, every weight format,
frozen-ness, errors by name. Models are tiny (dim 32-64, 2 blocks) so the file runs in seconds."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from transformers import (
    DINOv3ViTConfig,
    DINOv3ViTModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from svg_diffusion.encoders import (
    ENCODER_CONFIGS,
    FrozenEncoder,
    VisionTransformer,
    get_config,
    load_encoder,
    load_vit,
    save_encoder,
)
from svg_diffusion.errors import SVGError


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (LayerNorm and LayerScale included), so parity checks every parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def assert_close(actual: torch.Tensor, reference: torch.Tensor) -> None:
    """Max absolute error within 1e-4 of the reference's scale."""
    assert actual.shape == reference.shape
    error = (actual - reference).abs().max() / reference.abs().max()
    assert error <= 1e-4, f"relative error {error:.2e}"


def hf_dinov3(gated: bool, registers: int) -> DINOv3ViTModel:
    config = DINOv3ViTConfig(
        hidden_size=64, intermediate_size=96 if gated else 256, num_hidden_layers=2, num_attention_heads=4,
        patch_size=4, image_size=32, num_register_tokens=registers, use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu", layer_norm_eps=1e-5,
    )
    return randomize(DINOv3ViTModel(config))


def hf_dinov2(registers: bool) -> nn.Module:
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=4, image_size=16)
    if registers:
        return randomize(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=3, **common)))
    return randomize(Dinov2Model(Dinov2Config(**common)))


def saved(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[DINOv3ViTModel, str]:
    """A transformers DINOv3 with exactly the "tiny" architecture, saved with save_pretrained."""
    model = hf_dinov3(gated=False, registers=2)
    return model, saved(model, tmp_path_factory)


def meta_keys(depth: int, ffn: tuple[str, ...], dinov2: bool, registers: bool) -> set[str]:
    """The state dict keys of Meta's released checkpoints (their hub code), written out independently of our code."""
    keys = {"cls_token", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    keys |= {"pos_embed"} if dinov2 else {"rope_embed.periods"}
    if registers:
        keys.add("register_tokens" if dinov2 else "storage_tokens")
    for i in range(depth):
        block = f"blocks.{i}."
        keys |= {block + name for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "ls1.gamma",
                                           "ls2.gamma", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                                           "attn.proj.bias")}
        keys |= {f"{block}mlp.{layer}.{leaf}" for layer in ffn for leaf in ("weight", "bias")}
        if not dinov2:
            keys.add(block + "attn.qkv.bias_mask")
    return keys


# ------------------------------------------------------------------------------------ named architectures


@pytest.mark.parametrize(
    "name, ffn, dinov2, registers, millions",
    [
        ("dinov3_vits16", ("fc1", "fc2"), False, True, 21.6),
        ("dinov3_vits16plus", ("w1", "w2", "w3"), False, True, 28.7),
        ("dinov3_vitb16", ("fc1", "fc2"), False, True, 85.7),
        ("dinov3_vitl16", ("fc1", "fc2"), False, True, 303.1),
        ("dinov2_vits14", ("fc1", "fc2"), True, False, 22.1),
        ("dinov2_vitb14_reg", ("fc1", "fc2"), True, True, 86.6),
    ],
)
def test_named_configs_have_meta_keys_and_sizes(name, ffn, dinov2, registers, millions):
    cfg = ENCODER_CONFIGS[name]
    with torch.device("meta"):  # shapes only, no memory
        model = VisionTransformer(cfg)
    state = model.state_dict()
    assert set(state) == meta_keys(cfg.depth, ffn, dinov2, registers)
    assert state["mask_token"].shape == (1, cfg.embed_dim)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)
    if name == "dinov3_vits16plus":  # the SVG paper's encoder
        assert state["blocks.0.mlp.w1.weight"].shape == (1536, 384)
        assert state["storage_tokens"].shape == (1, 4, 384)
        assert (cfg.norm_eps, cfg.rope_base, cfg.rope_normalize_coords) == (1e-5, 100.0, "separate")
    if dinov2:
        assert state["pos_embed"].shape == (1, 1 + 37 * 37, cfg.embed_dim)
        assert cfg.norm_eps == 1e-6


def test_dinov2_position_table_is_kept_at_its_grid_and_resampled_elsewhere():
    model = VisionTransformer(dataclasses.replace(get_config("dinov2_vits14"), depth=1))
    assert model._position_table(37, 37) is model.pos_embed
    table = model._position_table(20, 30)  # Meta's +0.1 scale-factor resampling must land on the exact grid
    assert table.shape == (1, 1 + 20 * 30, 384)
    assert torch.equal(table[:, 0], model.pos_embed[:, 0])


# --------------------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize(
    "build, size, prefix",
    [
        (lambda: hf_dinov3(gated=True, registers=2), (32, 24), 3),  # SwiGLU, storage tokens, non-square RoPE
        (lambda: hf_dinov3(gated=False, registers=0), (20, 36), 1),
        (lambda: hf_dinov2(registers=False), (16, 16), 1),  # the table's own 4x4 grid
        (lambda: hf_dinov2(registers=False), (24, 20), 1),  # resampled bicubically to 6x5
        (lambda: hf_dinov2(registers=True), (28, 20), 4),  # resampled with antialiasing
    ],
)
def test_outputs_match_transformers(build, size, prefix, tmp_path_factory):
    reference = build()
    ours = load_vit(saved(reference, tmp_path_factory))
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(pixel_values=images).last_hidden_state
        out = ours.forward_features(images)
    assert_close(out["x_norm_patchtokens"], expected[:, prefix:])
    assert_close(out["x_norm_clstoken"], expected[:, 0])
    if prefix > 1:
        assert_close(out["x_storage_tokens"], expected[:, 1:prefix])


def test_masks_match_transformers_bool_masked_pos(hf_tiny):
    reference, folder = hf_tiny
    ours = load_vit(folder)
    images = torch.randn(2, 3, 32, 32)
    masks = torch.rand(2, 64, generator=torch.Generator().manual_seed(2)) < 0.5
    with torch.no_grad():
        expected = reference(pixel_values=images, bool_masked_pos=masks).last_hidden_state[:, 3:]
        assert_close(ours(images, masks=masks)["x_norm_patchtokens"], expected)
        assert not torch.allclose(ours(images)["x_norm_patchtokens"], expected)


def test_layer_option_is_the_normed_output_of_that_block(hf_tiny):
    reference, folder = hf_tiny
    images = torch.rand(2, 3, 32, 16) * 2 - 1
    normalized = ((images + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = reference(pixel_values=normalized, output_hidden_states=True).hidden_states
    for layer in (1, 2):
        features = load_encoder(folder, layer=layer)(images)
        expected = reference.norm(hidden[layer])[:, 3:].transpose(1, 2).reshape(2, 64, 8, 4)
        assert_close(features, expected)
    with pytest.raises(SVGError, match="layer 3 is out of range"):
        load_encoder(folder, layer=3)


# ------------------------------------------------------------------------------------------ weight formats


def test_every_format_loads_to_identical_outputs(hf_tiny, tmp_path):
    reference, folder = hf_tiny
    images = torch.rand(3, 3, 16, 24) * 2 - 1
    from_hf_folder = load_encoder("tiny", weights=folder)
    from_hf_file = load_encoder("tiny", weights=f"{folder}/model.safetensors")
    torch.save(from_hf_folder.vit.state_dict(), tmp_path / "meta.pth")  # our keys are Meta's keys
    from_meta = load_encoder("tiny", weights=tmp_path / "meta.pth")
    save_encoder(from_meta, tmp_path / "ours")
    from_ours = load_encoder(tmp_path / "ours")
    from_ours_as_weights = load_encoder("tiny", weights=tmp_path / "ours")

    expected = from_hf_folder(images)
    for encoder in (from_hf_file, from_meta, from_ours, from_ours_as_weights):
        assert torch.equal(encoder(images), expected)
    assert from_ours.config == from_meta.config
    assert (from_ours.embed_dim, from_ours.patch_size) == (64, 4)


def test_config_from_hf_folder_matches_the_named_architecture(hf_tiny):
    loaded = load_vit(hf_tiny[1]).config
    named = get_config("tiny")
    for field in ("embed_dim", "depth", "num_heads", "patch_size", "ffn_layer", "ffn_hidden_dim", "mask_k_bias",
                  "num_storage_tokens", "position", "rope_base", "norm_eps", "image_mean", "image_std"):
        assert getattr(loaded, field) == getattr(named, field), field


def test_folder_of_another_architecture_is_refused(hf_tiny):
    with pytest.raises(SVGError, match="embed_dim 64 \\(expected 128\\)"):
        load_encoder("demo", weights=hf_tiny[1])


@pytest.fixture
def meta_pth(tmp_path) -> tuple[dict, str]:
    state = VisionTransformer(get_config("tiny")).state_dict()
    return state, str(tmp_path / "tiny.pth")


def test_unexpected_key_is_named(meta_pth):
    state, path = meta_pth
    torch.save({**state, "blocks.0.attn.extra": torch.zeros(3)}, path)
    with pytest.raises(SVGError, match="unexpected keys: blocks.0.attn.extra"):
        load_encoder("tiny", weights=path)


def test_missing_key_is_named(meta_pth):
    state, path = meta_pth
    torch.save({k: v for k, v in state.items() if k != "blocks.1.ls2.gamma"}, path)
    with pytest.raises(SVGError, match="missing keys: blocks.1.ls2.gamma"):
        load_encoder("tiny", weights=path)


def test_shape_mismatch_is_named(meta_pth):
    state, path = meta_pth
    torch.save({**state, "norm.weight": torch.ones(32)}, path)
    with pytest.raises(SVGError, match=r"shape mismatch: norm.weight \(file \(32,\), expected \(64,\)\)"):
        load_encoder("tiny", weights=path)


def test_rope_periods_of_another_base_are_refused(meta_pth):
    state, path = meta_pth
    torch.save({**state, "rope_embed.periods": state["rope_embed.periods"] * 2}, path)
    with pytest.raises(SVGError, match="rope_embed.periods differs"):
        load_encoder("tiny", weights=path)


def test_unreadable_files_raise_svg_errors(tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"not a pickle")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    torch.save({"epoch": 3}, tmp_path / "not_weights.pth")
    cases = [("broken.pth", "not a readable PyTorch"), ("broken.safetensors", "not a readable safetensors"),
             ("not_weights.pth", "flat state dict"), ("absent.pth", "not found")]
    for name, message in cases:
        with pytest.raises(SVGError, match=message):
            load_encoder("tiny", weights=tmp_path / name)
    with pytest.raises(SVGError, match="unknown encoder 'dinov9'"):
        load_encoder("dinov9")


def test_name_without_weights_warns_random_init():
    with pytest.warns(UserWarning, match="random initialization"):
        load_encoder("tiny")


# ---------------------------------------------------------------------------------------------- frozen-ness


@pytest.fixture
def frozen(hf_tiny) -> FrozenEncoder:
    return load_encoder("tiny", weights=hf_tiny[1])


def test_input_size_must_be_a_multiple_of_the_patch(frozen):
    with pytest.raises(SVGError, match="30x32 is not a multiple of the encoder's patch size 4"):
        frozen(torch.zeros(1, 3, 30, 32))
    with pytest.raises(SVGError, match=r"expected images \[B, 3, H, W\]"):
        frozen(torch.zeros(1, 1, 32, 32))


def test_frozen_encoder_trains_nothing_and_stays_in_eval(frozen):
    decoder = nn.Conv2d(64, 3, kernel_size=1)
    model = nn.Sequential(frozen, decoder)
    model.train()
    assert decoder.training and not any(m.training for m in frozen.modules())
    assert [p for p in model.parameters() if p.requires_grad] == list(decoder.parameters())

    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    decoder_before = decoder.weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)  # even if handed every parameter
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    loss = model(images).square().mean()
    loss.backward()
    optimizer.step()

    assert all(p.grad is None for p in frozen.parameters())
    assert all(torch.equal(v, before[k]) for k, v in frozen.state_dict().items())
    assert not torch.equal(decoder.weight, decoder_before)
    features = frozen(images)
    assert not features.requires_grad and features.shape == (4, 64, 4, 4)


# ------------------------------------------------------------------------------------------ trainable ViT


def test_vit_trains_every_parameter_and_attention_impls_agree():
    torch.manual_seed(0)
    sdpa = VisionTransformer(get_config("tiny")).train()
    math_cfg = dataclasses.replace(get_config("tiny"), attn_impl="math")
    math = VisionTransformer(math_cfg).train()
    math.load_state_dict(sdpa.state_dict())
    images = torch.randn(2, 3, 16, 16)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :5] = True
    for model in (sdpa, math):
        out = model(images, masks=masks)
        (out["x_norm_patchtokens"].square().mean() + out["x_norm_clstoken"].sum()).backward()
    assert_close(math(images)["x_norm_patchtokens"], sdpa(images)["x_norm_patchtokens"])
    for (name, p_sdpa), p_math in zip(sdpa.named_parameters(), math.parameters()):
        assert p_sdpa.grad is not None and p_sdpa.grad.abs().sum() > 0, name
        assert_close(p_math.grad, p_sdpa.grad)
    # Unmasked steps still give mask_token a (zero) gradient, so DDP finds no unused parameter.
    sdpa.zero_grad()
    sdpa(images)["x_norm_clstoken"].sum().backward()
    assert sdpa.mask_token.grad is not None


def test_fully_masked_images_are_indistinguishable():
    model = VisionTransformer(get_config("tiny")).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(images, masks=torch.ones(2, 16, dtype=torch.bool))["x_norm_patchtokens"]
    assert torch.allclose(out[0], out[1], atol=1e-6)
    with pytest.raises(SVGError, match="masks must be"):
        model(images, masks=torch.ones(2, 15, dtype=torch.bool))


def test_qkv_bias_mask_zeroes_the_k_bias_only():
    qkv = VisionTransformer(get_config("tiny")).blocks[0].attn.qkv
    with torch.no_grad():
        qkv.bias.normal_()
        x = torch.randn(5, 64)
        q, k, v = qkv(x).chunk(3, dim=-1)
        wq, wk, wv = qkv.weight.chunk(3)
        bq, _, bv = qkv.bias.chunk(3)
    assert_close(k, x @ wk.T)
    assert_close(q, x @ wq.T + bq)
    assert_close(v, x @ wv.T + bv)
