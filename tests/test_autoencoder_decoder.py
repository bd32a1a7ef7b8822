"""The LDM conv decoder: shapes, parameter count, the public checkpoint's key layout and the CPU inference path."""

import pytest
import torch
import torch.nn.functional as F

from svg_diffusion.autoencoder import Decoder, DecoderConfig
from svg_diffusion.autoencoder.decoder import fast_cpu_inference, upsample_conv
from svg_diffusion.config import ConfigError, from_dict

DEMO = DecoderConfig(z_channels=136, resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))


def test_paper_decoder_shape_and_size():
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        decoder = Decoder(DecoderConfig())
        out = decoder(torch.empty(2, 392, 16, 16))
    assert out.shape == (2, 3, 256, 256)
    params = sum(p.numel() for p in decoder.parameters())
    assert 42e6 < params < 44e6  # the paper's ~43M


def test_paper_decoder_has_the_public_key_layout():
    with torch.device("meta"):
        state = Decoder(DecoderConfig()).state_dict()
    shapes = {key: tuple(t.shape) for key, t in state.items()}
    assert shapes["conv_in.weight"] == (512, 392, 3, 3)
    assert shapes["mid.attn_1.q.weight"] == (512, 512, 1, 1)
    # up.0 is the highest resolution (ch 128), up.4 the lowest (ch 512, 16x16, with attention).
    assert shapes["up.0.block.0.conv1.weight"] == (128, 128, 3, 3)
    assert shapes["up.3.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)
    assert shapes["up.4.attn.2.proj_out.weight"] == (512, 512, 1, 1)
    assert shapes["up.1.upsample.conv.weight"] == (128, 128, 3, 3)
    assert shapes["conv_out.weight"] == (3, 128, 3, 3)
    assert not any(key.startswith("up.0.upsample") for key in state)
    assert not any(".attn." in key and not key.startswith("up.4") for key in state)
    assert sum(key.startswith("up.2.block.") for key in state) == 3 * 8  # 3 blocks, 8 tensors each


def test_demo_decoder_runs_and_backpropagates():
    decoder = Decoder(DEMO)
    z = torch.randn(2, 136, 8, 8, requires_grad=True)
    out = decoder(z)
    assert out.shape == (2, 3, 32, 32)
    out.square().mean().backward()
    assert z.grad.abs().sum() > 0 and decoder.last_layer.grad is not None
    assert len(decoder.up[2].attn) == 2 and len(decoder.up[0].attn) == 0  # attention at 8x8 only


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsampling_conv_at_low_resolution_equals_nearest_x2_then_conv(channels_last):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 5, 7, generator=generator)  # odd, unequal sides: every border case of the phases
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16, 8, 3, 3, generator=generator), torch.randn(16, generator=generator)
    plain = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)
    fast = upsample_conv(x, weight, bias)
    assert fast.shape == (3, 16, 10, 14)
    assert fast.is_contiguous(memory_format=torch.channels_last) == channels_last  # the layout is kept
    torch.testing.assert_close(fast, plain)


def test_cpu_inference_matches_the_training_path():
    decoder = Decoder(DEMO).eval()
    z = torch.randn(4, 136, 8, 8, generator=torch.Generator().manual_seed(0))
    # with gradients: the contiguous layout and the plain upsampling convs; without: channels_last, upsample_conv
    contiguous = decoder(z).detach()
    with torch.no_grad():
        assert fast_cpu_inference(z)
        fast = decoder(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fast_cpu_inference(z)  # GroupNorm in channels_last is slower in bf16
    assert not fast_cpu_inference(z)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, contiguous)  # fp32 tolerances: only the summation order differs


def test_decoder_config_is_validated():
    with pytest.raises(ConfigError, match="multiple of 32"):
        from_dict(DecoderConfig, {"ch": 40})
    with pytest.raises(ConfigError, match="not divisible"):
        from_dict(DecoderConfig, {"resolution": 36, "ch_mult": [1, 1, 2, 2]})
