"""The latent diffusion transformer and the flow-matching objective."""

import math

import pytest
import torch

from svg_diffusion.config import ConfigError, from_dict
from svg_diffusion.diffusion import (
    DiT,
    DiTConfig,
    FlowMatchingConfig,
    draw_flow_inputs,
    flow_matching_loss,
    interpolate,
    shift_from_public,
    shift_time,
    shift_to_public,
)
from svg_diffusion.diffusion.transformer import timestep_embedding
from svg_diffusion.errors import SVGError

TINY = dict(in_channels=4, input_size=4, hidden_size=32, depth=2, num_heads=4, num_classes=3)


def random_dit(seed: int = 0, **overrides) -> DiT:
    """A tiny DiT with every parameter random (adaLN-Zero would make the output identically zero)."""
    torch.manual_seed(seed)
    model = DiT(DiTConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def test_xl_has_676m_parameters_and_public_key_names():
    with torch.device("meta"):
        model = DiT(DiTConfig.from_size("XL", learn_sigma=True))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 676e6) / 676e6 < 0.01, count
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pos_embed"] == (1, 256, 1152)
    assert shapes["ln1.weight"] == (1152, 392)
    assert shapes["y_embedder.embedding_table.weight"] == (1001, 1152)
    assert shapes["t_embedder.mlp.0.weight"] == (1152, 256)
    assert shapes["t_embedder.mlp.2.weight"] == (1152, 1152)
    assert shapes["blocks.27.attn.q_norm.weight"] == (72,)
    assert shapes["blocks.27.adaLN_modulation.1.weight"] == (6 * 1152, 1152)
    assert shapes["final_layer.linear.weight"] == (2 * 392, 1152)
    assert "pos_embed" not in dict(model.named_parameters())  # fixed, never trained


def test_named_sizes_and_validation():
    sizes = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    for size, (depth, width, heads) in sizes.items():
        cfg = DiTConfig.from_size(size, in_channels=8)
        assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.in_channels) == (depth, width, heads, 8)
    with pytest.raises(ConfigError, match="unknown DiT size"):
        DiTConfig.from_size("XXXL")
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        from_dict(DiTConfig, {"hidden_size": 100, "num_heads": 3})
    with pytest.raises(ConfigError, match="rope needs"):
        from_dict(DiTConfig, {"hidden_size": 48, "num_heads": 8, "rope": True})


def test_adaln_zero_init_predicts_exactly_zero():
    torch.manual_seed(0)
    model = DiT(DiTConfig(**TINY))
    x = torch.randn(5, 4, 4, 4)
    out = model(x, torch.rand(5), torch.tensor([0, 1, 2, 3, 1]))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))
    # Each block starts as the identity: its gates are zero.
    block = model.blocks[0]
    tokens = torch.randn(5, 16, 32)
    assert torch.equal(block(tokens, torch.randn(5, 32), None), tokens)


@pytest.mark.parametrize("switches", [
    {}, {"patch_size": 2}, {"norm": "rmsnorm"}, {"mlp": "swiglu"}, {"rope": True}, {"learn_sigma": True},
    {"qk_norm": False}, {"patch_size": 2, "norm": "rmsnorm", "mlp": "swiglu", "rope": True},
])
def test_switches_forward_and_backward(switches):
    model = random_dit(**switches)
    x = torch.randn(3, 4, 4, 4)
    out = model(x, torch.rand(3), torch.tensor([0, 1, 3]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_patchify_is_row_major_and_inverts():
    model = random_dit(patch_size=2)
    x = torch.randn(2, 4, 4, 4)
    assert torch.equal(model.unpatchify(model.patchify(x)), x)
    # Patch size 1: a token is the C channels of one position, positions in row-major order (public layout).
    flat = random_dit().patchify(x)
    assert torch.equal(flat, x.flatten(2).transpose(1, 2))


def test_position_embedding_layout():
    model = DiT(DiTConfig(**TINY))
    emb = model.pos_embed[0].double()  # [16 tokens, 32]
    omega = 1.0 / 10000 ** (torch.arange(8, dtype=torch.float64) / 8)
    row, col = 1, 3
    token = emb[row * 4 + col]
    # First half: [sin | cos] of the column; second half: of the row (MAE/DiT layout).
    assert torch.allclose(token[:8], torch.sin(col * omega), atol=1e-7)
    assert torch.allclose(token[8:16], torch.cos(col * omega), atol=1e-7)
    assert torch.allclose(token[16:24], torch.sin(row * omega), atol=1e-7)
    assert torch.allclose(token[24:], torch.cos(row * omega), atol=1e-7)


def test_timestep_embedding_uses_raw_t():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 256)
    assert torch.equal(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    # The fastest frequency is 1: t = 1 gives cos(1), sin(1) (a x1000 scaling would give cos(1000)).
    assert emb[1, 0].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    assert emb[1, 128].item() == pytest.approx(math.sin(1.0), abs=1e-6)


def test_wrong_latent_shape_is_a_user_error():
    with pytest.raises(SVGError, match=r"expected latents \[B, 4, 4, 4\]"):
        random_dit()(torch.randn(2, 3, 4, 4), torch.rand(2), torch.zeros(2, dtype=torch.long))


def test_label_dropout_uses_the_null_class():
    model = random_dit()
    assert model.null_class == 3
    assert model.y_embedder.embedding_table.num_embeddings == 4
    x, t = torch.randn(4, 4, 4, 4), torch.rand(4)
    y = torch.tensor([0, 1, 2, 1])
    drop = torch.tensor([True, False, True, False])
    with torch.no_grad():
        dropped = model(x, t, y, drop=drop)
        assert torch.equal(dropped, model(x, t, torch.tensor([3, 1, 3, 1])))
        assert not torch.allclose(dropped, model(x, t, y))
    # Training draws drops with the configured probability from the given generator.
    inputs = draw_flow_inputs((20000, 1, 1, 1), FlowMatchingConfig(), torch.Generator().manual_seed(0))
    assert inputs.drop.float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_flow_inputs_are_reproducible_and_sliceable():
    cfg = FlowMatchingConfig(time_sampling="logit_normal")
    a = draw_flow_inputs((8, 4, 4, 4), cfg, torch.Generator().manual_seed(3))
    b = draw_flow_inputs((8, 4, 4, 4), cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a.noise, b.noise) and torch.equal(a.t, b.t) and torch.equal(a.drop, b.drop)
    part = a.rows(2, 6)
    assert torch.equal(part.noise, a.noise[2:6]) and torch.equal(part.t, a.t[2:6])
    assert torch.equal(part.drop, a.drop[2:6])
    assert a.t.dtype == torch.float32 and ((a.t >= 0) & (a.t <= 1)).all()


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_training_time_shift_favours_noise(sampling):
    # With k = 2.5, P(t' < 1/2) = P(t < k / (k + 1)) = 5/7 for uniform t; 1/2 without shift.
    gen = torch.Generator().manual_seed(0)
    shifted = draw_flow_inputs((20000, 1), FlowMatchingConfig(time_sampling=sampling, shift=2.5), gen).t
    plain = draw_flow_inputs((20000, 1), FlowMatchingConfig(time_sampling=sampling, shift=1.0), gen).t
    assert (plain < 0.5).float().mean().item() == pytest.approx(0.5, abs=0.015)
    if sampling == "uniform":
        assert (shifted < 0.5).float().mean().item() == pytest.approx(5 / 7, abs=0.015)
    else:
        assert (shifted < 0.5).float().mean().item() > 0.6


def test_shift_convention_matches_public_code():
    assert shift_from_public(0.4) == pytest.approx(2.5)
    assert shift_from_public(0.15) == pytest.approx(20 / 3)
    assert shift_to_public(2.5) == pytest.approx(0.4)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (0.15, 0.4, 1.0, 3.0):
        public = s * t / (1 + (s - 1) * t)  # the public code's map on t
        assert torch.allclose(shift_time(t, shift_from_public(s)), public, rtol=0, atol=1e-15)
    # SD3 form on sigma = 1 - t.
    k, sigma = 2.5, 1 - t
    assert torch.allclose(1 - shift_time(t, k), k * sigma / (1 + (k - 1) * sigma), atol=1e-15)
    assert torch.equal(shift_time(t, 1.0), t)


def test_loss_is_mse_to_the_velocity_target():
    model = random_dit()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, 4, 4, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2])
    inputs = draw_flow_inputs(x.shape, FlowMatchingConfig(), gen)
    loss = flow_matching_loss(model, x, y, inputs.noise, inputs.t, inputs.drop)
    z_t = (1 - inputs.t.view(-1, 1, 1, 1)) * inputs.noise + inputs.t.view(-1, 1, 1, 1) * x
    assert torch.equal(interpolate(x, inputs.noise, inputs.t), z_t)
    expected = (model(z_t, inputs.t, y, drop=inputs.drop) - (x - inputs.noise)).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_tiny_dit_learns_a_fixed_latent_dataset():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    # Eight latents of three classes: class-dependent means plus a little structure.
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x = torch.randn(8, 4, 4, 4, generator=gen) * 0.3 + y.view(-1, 1, 1, 1).float() - 1
    model = DiT(DiTConfig(**TINY))
    cfg = FlowMatchingConfig()
    held_out = draw_flow_inputs((8, 4, 4, 4), cfg, torch.Generator().manual_seed(99))

    def eval_loss() -> float:
        with torch.no_grad():
            return flow_matching_loss(model, x, y, held_out.noise, held_out.t).item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0)
    for _ in range(40):
        inputs = draw_flow_inputs(x.shape, cfg, gen)
        loss = flow_matching_loss(model, x, y, inputs.noise, inputs.t, inputs.drop)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)
