"""SVGAutoencoder on a real (small, randomly initialized) frozen ViT and real Fashion-MNIST images."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from svg_diffusion.autoencoder import AutoencoderConfig, DecoderConfig, ResidualEncoderConfig, SVGAutoencoder
from svg_diffusion.config import ConfigError, from_dict
from svg_diffusion.data import FashionMNIST
from svg_diffusion.encoders import FrozenEncoder, VisionTransformer, get_config
from svg_diffusion.errors import SVGError

RESIDUAL_CHANNELS = 4


def tiny_config(residual_channels: int = RESIDUAL_CHANNELS, **overrides) -> AutoencoderConfig:
    """32x32 images, the 'tiny' encoder (64 channels, patch 4) -> 8x8 latents, a small residual ViT and decoder."""
    fields = dict(
        encoder="tiny", image_size=32,
        residual=ResidualEncoderConfig(channels=residual_channels, depth=1, width=32, num_heads=2, mlp_dim=64),
        decoder=DecoderConfig(z_channels=64 + residual_channels, resolution=32, ch=32, ch_mult=(1, 2, 2),
                              num_res_blocks=1, attn_resolutions=()),
    )
    return AutoencoderConfig(**{**fields, **overrides})


def tiny_autoencoder(residual_channels: int = RESIDUAL_CHANNELS, **overrides) -> SVGAutoencoder:
    torch.manual_seed(0)
    encoder = FrozenEncoder(VisionTransformer(get_config("tiny")))
    return SVGAutoencoder(tiny_config(residual_channels, **overrides), encoder)


def calibrated(model: SVGAutoencoder, images: torch.Tensor) -> SVGAutoencoder:
    """Running statistics from one training-mode pass (as after training), then eval mode."""
    with torch.no_grad():
        model.train()(images)
    return model.eval()


@pytest.fixture(scope="module")
def images(fmnist_dir):
    dataset = FashionMNIST("test", image_size=32, root=fmnist_dir, limit=6)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_latent_is_encoder_features_then_residual(images):
    model = calibrated(tiny_autoencoder(), images)
    with torch.no_grad():
        latent = model.encode(images)
        recon = model.decode(latent)
    assert latent.shape == (6, 64 + RESIDUAL_CHANNELS, 8, 8) == (6, model.latent_channels, 8, 8)
    assert torch.equal(latent[:, :64], model.encoder(images))
    assert recon.shape == images.shape
    with pytest.raises(SVGError, match=r"expected latents \[B, 68, h, w\]"):
        model.decode(latent[:, :64])


def test_running_alignment_makes_latents_batch_independent(images):
    model = calibrated(tiny_autoencoder(), images)
    with torch.no_grad():
        whole = model.encode(images)
        alone = torch.cat([model.encode(images[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(alone, whole, atol=1e-5, rtol=1e-5)


def test_batch_alignment_depends_on_the_batch(images):
    model = tiny_autoencoder(alignment="batch").eval()
    with torch.no_grad():
        whole = model.encode(images)[:2, 64:]
        pair = model.encode(images[:2])[:, 64:]
    assert (whole - pair).abs().max() > 1e-2


def test_residual_mask_replaces_chosen_samples(images):
    model = calibrated(tiny_autoencoder(), images)
    mask = torch.tensor([True, False, False, True, False, False])
    with torch.no_grad():
        plain = model.encode(images)
        masked = model.encode(images, residual_mask=mask)
        token = model.alignment(plain[:, :64], model.residual.mask_token.expand(1, -1, 8, 8))
    assert torch.equal(masked[~mask], plain[~mask])
    assert torch.equal(masked[:, :64], plain[:, :64])  # the frozen features are never masked
    for i in mask.nonzero().flatten():
        torch.testing.assert_close(masked[i, 64:], token[0])
    with pytest.raises(ValueError, match="residual mask"):
        model.encode(images, residual_mask=mask[:3])


def test_mask_draw_comes_from_the_generator():
    model = tiny_autoencoder()
    first = model.draw_residual_mask(10_000, torch.Generator().manual_seed(3))
    again = model.draw_residual_mask(10_000, torch.Generator().manual_seed(3))
    other = model.draw_residual_mask(10_000, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert 0.08 < first.float().mean() < 0.12  # mask_prob 0.1


def test_only_residual_encoder_and_decoder_are_trained(images):
    model = tiny_autoencoder().train()
    mask = torch.tensor([True, False, False, False, False, False])
    recon, latent = model(images, residual_mask=mask)
    (recon - images).abs().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(name.startswith(("residual.", "decoder.")) for name in trained)
    for name in ("residual.vit.blocks.0.attn.qkv.weight", "residual.head.2.weight", "residual.mask_token",
                 "decoder.conv_in.weight", "decoder.conv_out.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert not model.encoder.training  # train() on the parent cannot switch the frozen encoder


def test_save_and_load_round_trip(images, tmp_path):
    model = calibrated(tiny_autoencoder(), images)
    model.save_pretrained(tmp_path / "ae")
    assert {p.name for p in (tmp_path / "ae").iterdir()} == {"config.json", "model.safetensors", "encoder"}
    loaded = SVGAutoencoder.from_pretrained(tmp_path / "ae")
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        latent = model.encode(images)
        assert torch.equal(loaded.encode(images), latent)
        assert torch.equal(loaded.decode(latent), model.decode(latent))
    assert int(loaded.alignment.num_batches_tracked) == 1


def test_loading_names_what_is_wrong(images, tmp_path):
    with pytest.raises(SVGError, match="config.json is missing"):
        SVGAutoencoder.from_pretrained(tmp_path)
    folder = calibrated(tiny_autoencoder(), images).save_pretrained(tmp_path / "ae")
    weights = load_file(folder / "model.safetensors")
    del weights["decoder.conv_out.bias"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(SVGError, match="missing keys: decoder.conv_out.bias"):
        SVGAutoencoder.from_pretrained(folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["residual"]["depth"] = "two"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="residual.depth: expected int"):
        SVGAutoencoder.from_pretrained(folder)


def test_encoder_only_variant(images, tmp_path):
    model = tiny_autoencoder(residual_channels=0).eval()
    assert model.residual is None and model.latent_channels == 64
    with torch.no_grad():
        assert torch.equal(model.encode(images), model.encoder(images))
        model.save_pretrained(tmp_path / "ae")
        loaded = SVGAutoencoder.from_pretrained(tmp_path / "ae")
        latent = model.encode(images)
        assert torch.equal(loaded.decode(latent), model.decode(latent))


def test_estimated_statistics_average_the_batches(images):
    model = tiny_autoencoder().eval()
    model.estimate_alignment_statistics([images[:3], images[3:]])
    with torch.no_grad():
        feature_means = [model.encoder(half).mean(dim=(0, 2, 3)).mean() for half in (images[:3], images[3:])]
    torch.testing.assert_close(model.alignment.feature_mean, torch.stack(feature_means).mean())
    assert int(model.alignment.num_batches_tracked) == 2 and model.alignment.momentum == 0.01


def test_config_must_fit_the_encoder():
    with pytest.warns(UserWarning, match="random initialization"):  # from_config loads the named encoder
        assert SVGAutoencoder.from_config(tiny_config()).latent_size == 8
    encoder = FrozenEncoder(VisionTransformer(get_config("tiny")))
    with pytest.raises(SVGError, match="decoder.z_channels is 72 but the latent has 64 encoder"):
        SVGAutoencoder(tiny_config(decoder=DecoderConfig(z_channels=72, resolution=32, ch=32, ch_mult=(1, 2, 2))),
                       encoder)
    with pytest.raises(SVGError, match="the config says 1"):
        SVGAutoencoder(tiny_config(encoder_layer=1), encoder)
    with pytest.raises(ConfigError, match="mask_prob"):
        from_dict(AutoencoderConfig, {"mask_prob": 1.5})
    with pytest.raises(ConfigError, match="residual.heads: unknown key"):
        from_dict(AutoencoderConfig, {"residual": {"heads": 4}})
