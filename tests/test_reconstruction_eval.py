"""Reconstruction metrics on real Fashion-MNIST images with the real LPIPS and Inception weights."""

import json

import pytest
import torch
from PIL import Image

from svg_diffusion.autoencoder import LPIPS, AutoencoderConfig, DecoderConfig, ResidualEncoderConfig, SVGAutoencoder
from svg_diffusion.cli import main
from svg_diffusion.data import FashionMNIST
from svg_diffusion.diffusion.latent_transform import fit_pca
from svg_diffusion.diffusion.latents import LatentStatistics
from svg_diffusion.encoders import FrozenEncoder, VisionTransformer, get_config
from svg_diffusion.errors import SVGError
from svg_diffusion.evaluation import FeatureStats, psnr, ssim
from svg_diffusion.evaluation.reconstruction import (
    eval_autoencoder, evaluate_reconstruction, format_metrics_table, quantized,
)

COUNT = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def dataset(fmnist_dir):
    return FashionMNIST("test", image_size=32, root=fmnist_dir, limit=COUNT)


def test_perfect_reconstruction(dataset, tmp_path):
    metrics = evaluate_reconstruction(lambda images: images, dataset, batch_size=3, grid_images=5, out_dir=tmp_path)
    assert metrics["images"] == COUNT
    assert metrics["psnr"] == float("inf") and metrics["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["lpips"] == 0.0 and 0.0 <= metrics["rfid"] < 1e-3
    assert json.loads((tmp_path / "reconstruction.json").read_text()) == metrics
    with Image.open(tmp_path / "reconstruction.png") as grid:
        # two rows (originals, reconstructions) of 5 images of 32 px with 2 px padding, plus a label margin
        assert grid.height == 2 * 32 + 3 * 2 and grid.width > 5 * 32 + 6 * 2


def test_metrics_are_those_of_the_quantized_images(dataset):
    def shifted(images):  # a real degradation: one pixel to the right, brighter
        return torch.roll(images, 1, dims=-1) + 0.1

    metrics = evaluate_reconstruction(shifted, dataset, batch_size=5, rfid=True)
    images = torch.stack([image for image, _ in dataset])
    recon = quantized(shifted(images))
    assert metrics["psnr"] == pytest.approx(psnr(images, recon).mean().item(), rel=1e-9)
    assert metrics["ssim"] == pytest.approx(ssim(images, recon).mean().item(), rel=1e-9)
    assert metrics["lpips"] == pytest.approx(LPIPS()(images, recon).mean().item(), rel=1e-5)
    assert 5 < metrics["psnr"] < 30 and 0 < metrics["ssim"] < 1 and metrics["lpips"] > 0.01 and metrics["rfid"] > 1
    with pytest.raises(SVGError, match="reference statistics are of 3 images, the dataset has 8"):
        evaluate_reconstruction(shifted, dataset, reference=FeatureStats.from_features(torch.randn(3, 4)))


def tiny_autoencoder(images: torch.Tensor) -> SVGAutoencoder:
    torch.manual_seed(0)
    config = AutoencoderConfig(
        encoder="tiny", image_size=32,
        residual=ResidualEncoderConfig(channels=4, depth=1, width=32, num_heads=2, mlp_dim=64),
        decoder=DecoderConfig(z_channels=68, resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=()),
    )
    model = SVGAutoencoder(config, FrozenEncoder(VisionTransformer(get_config("tiny"))))
    with torch.no_grad():
        model.train()(images)  # running alignment statistics, as training leaves them
    return model


def test_eval_command_on_a_saved_autoencoder(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SVG_DIFFUSION_CACHE", str(tmp_path / "cache"))
    images = torch.stack([image for image, _ in dataset])
    model = tiny_autoencoder(images)
    model.save_pretrained(tmp_path / "ae")

    assert main(["eval-autoencoder", "--autoencoder", str(tmp_path / "ae"), "--data", "fashion_mnist", "--limit",
                 str(COUNT), "--batch-size", "4", "--device", "cpu", "--out-dir", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "eval" / "reconstruction.json").read_text())
    assert format_metrics_table({str(tmp_path / "ae"): saved}) in printed
    assert (tmp_path / "eval" / "reconstruction.png").is_file()
    # The command takes the originals' Inception statistics from the cache; the direct call computes them.
    assert any(path.is_file() for path in (tmp_path / "cache").rglob("*"))
    direct = evaluate_reconstruction(model, dataset, batch_size=4)
    assert model.training  # restored after the evaluation
    for key, value in direct.items():
        assert saved[key] == pytest.approx(value, rel=1e-5), key

    assert main(["eval-autoencoder", "--autoencoder", str(tmp_path), "--out-dir", str(tmp_path / "x")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"svg-diffusion eval-autoencoder: error: {tmp_path} ") and "config.json is missing" in line


def test_eval_through_a_latent_transform(dataset, tmp_path):
    """Through an invertible transform the metrics are the autoencoder's own; through a PCA transform of fewer
    directions they are those of decode(T⁻¹(T(encode(x)))), the latent outside its subspace dropped."""
    images = torch.stack([image for image, _ in dataset])
    model = tiny_autoencoder(images).eval()
    model.save_pretrained(tmp_path / "ae")
    with torch.no_grad():
        z = model.encode(images)
    per_channel = LatentStatistics(z.mean((0, 2, 3)), z.std((0, 2, 3)))
    pca = fit_pca([z], z.shape[1], components=2)

    def evaluate(**options) -> list[float]:
        metrics = eval_autoencoder(tmp_path / "ae", limit=COUNT, device="cpu", rfid=False, progress=False, **options)
        return [metrics[name] for name in ("psnr", "ssim", "lpips")]

    plain = evaluate()
    assert evaluate(latent_transform=per_channel) == pytest.approx(plain, rel=1e-3)
    through = evaluate(latent_transform=pca)
    direct = evaluate_reconstruction(lambda x: model.decode(pca.decode(pca.encode(model.encode(x)))), dataset, rfid=False)
    assert through == pytest.approx([direct[name] for name in ("psnr", "ssim", "lpips")], rel=1e-6)
    assert through[0] != pytest.approx(plain[0], rel=1e-3)
