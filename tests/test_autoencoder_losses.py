"""PatchGAN discriminator, hinge losses, the adaptive GAN weight and the combined autoencoder loss."""

import pytest
import torch

from svg_diffusion.autoencoder import (
    LPIPS,
    AutoencoderLoss,
    Decoder,
    DecoderConfig,
    LossConfig,
    PatchDiscriminator,
    adaptive_gan_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
)


@pytest.fixture(scope="module")
def criterion():
    torch.manual_seed(0)
    return AutoencoderLoss(LossConfig(disc_start=10), LPIPS())


def small_decoder() -> Decoder:
    torch.manual_seed(1)
    return Decoder(DecoderConfig(z_channels=8, resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=0,
                                 attn_resolutions=()))


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_patch_discriminator_shapes(norm):
    disc = PatchDiscriminator(norm=norm)
    assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    with torch.device("meta"):
        assert PatchDiscriminator(norm=norm)(torch.empty(2, 3, 256, 256)).shape == (2, 1, 30, 30)
    widths = [m.out_channels for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [64, 128, 256, 512, 1]


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # real: relu(1 - 2) = 0, relu(1 - 0.5) = 0.5; fake: relu(1 - 3) = 0, relu(1 + 0) = 1.
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert hinge_generator_loss(fake).item() == pytest.approx(1.5)


def test_adaptive_weight_is_the_clamped_gradient_norm_ratio():
    decoder = small_decoder()
    recon = decoder(torch.randn(2, 8, 16, 16))
    rec_loss, gan_loss = recon.abs().mean(), 3.0 * recon.mean()
    weight = adaptive_gan_weight(rec_loss, gan_loss, decoder.last_layer)
    rec_grad = torch.autograd.grad(rec_loss, decoder.last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, decoder.last_layer, retain_graph=True)[0]
    torch.testing.assert_close(weight, rec_grad.norm() / (gan_grad.norm() + 1e-4))
    assert not weight.requires_grad
    tiny = adaptive_gan_weight(rec_loss, 1e-12 * recon.mean(), decoder.last_layer, max_weight=5.0)
    assert tiny.item() == 5.0


def test_generator_loss_before_and_after_disc_start(criterion):
    decoder = small_decoder()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon = decoder(torch.randn(2, 8, 16, 16))
    assert not criterion.gan_active(9) and criterion.gan_active(10)

    loss, logs = criterion.generator_loss(images, recon, decoder.last_layer, use_gan=False)
    assert set(logs) == {"l1", "lpips", "rec", "total"}
    torch.testing.assert_close(loss, (images - recon).abs().mean() + criterion.lpips(images, recon).mean())

    loss, logs = criterion.generator_loss(images, recon, decoder.last_layer, use_gan=True)
    torch.testing.assert_close(loss, logs["rec"] + logs["gan_weight"] * logs["gan"])
    assert logs["gan_weight"] > 0
    loss.backward()
    # The generator loss reaches the decoder, never the discriminator.
    assert decoder.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in criterion.discriminator.parameters())


def test_discriminator_loss_trains_the_discriminator():
    torch.manual_seed(0)
    criterion = AutoencoderLoss(LossConfig(disc_channels=32), lpips=LPIPS())
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    recon = (images + 0.5 * torch.randn_like(images)).requires_grad_()
    optimizer = torch.optim.Adam(criterion.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.9))
    for _ in range(10):
        loss, logs = criterion.discriminator_loss(images, recon)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert recon.grad is None  # inputs are detached
    assert logs["disc_loss"] < 0.2  # from ~1 at initialisation: it tells noisy from clean images
    assert logs["logits_real"] > 1 and logs["logits_fake"] < -1
