"""`svg-diffusion diagnose` on the shipped demo pipeline and real Fashion-MNIST test images (small counts: the
numbers are biased at this size, the test checks that every measurement is there and is what it says)."""

import json

import pytest
import torch
from PIL import Image

from svg_diffusion.cli import main
from svg_diffusion.data import FashionMNIST
from svg_diffusion.demo import demo_pipeline
from svg_diffusion.diffusion.latents import LatentStatistics
from svg_diffusion.evaluation.diagnose import diagnose, format_diagnosis
from svg_diffusion.pipeline import SamplingDefaults, SVGPipeline

from test_latent_transform import random_dit

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = {"rfid", "rfid_through_transform", "rfid_through_pca", "rfid_noise", "fid", "precision", "recall",
        "latent_std_real", "latent_std_generated", "position_frechet", "position_frechet_real_halves",
        "off_subspace_energy_ratio", "spectrum", "explained_variance", "pca_components", "transform",
        "modelled_channels", "latent_channels", "images", "samples", "real"}


def test_diagnose_command_on_the_demo_pipeline(tmp_path, capsys, fmnist_dir):
    """The shipped demo models 16 whitened PCA directions of its 136-channel latent."""
    args = ["diagnose", "--pipeline", "demo-pipeline", "--real", "fashion_mnist:test", "--limit", "24", "--samples", "12",
            "--steps", "2", "--out-dir", str(tmp_path), "--batch-size", "24", "--json"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(results) and results == json.loads((tmp_path / "diagnose.json").read_text())
    assert results["transform"] == "pca" and results["modelled_channels"] == 16 and results["latent_channels"] == 136
    # the diagnostic PCA defaults to the pipeline's k
    assert results["pca_components"] == 16 and results["images"] == 24 and results["samples"] == 12
    assert results["rfid"] > 0 and results["rfid_through_transform"] > 0
    assert list(results["rfid_noise"]) == ["0.1", "0.2", "0.4"]
    assert list(results["spectrum"]) == ["0.5", "0.8", "0.9", "0.95", "0.99"]
    ks = list(results["spectrum"].values())
    assert ks == sorted(ks) and 1 <= ks[0] and ks[-1] <= 136 and len(results["explained_variance"]) == 136
    # its samples lie in the 16-direction subspace (decoded from it), up to the fit on 24 images here
    assert results["off_subspace_energy_ratio"] < 0.5
    with Image.open(tmp_path / "spectrum.png") as image:
        assert image.width > 300
    table = format_diagnosis(results)
    assert "rFID through top-16 PCA" in table and "off-subspace energy (top-16)" in table


def test_diagnose_sees_a_full_latent_dit_that_fills_the_empty_directions(fmnist_dir):
    """A per-channel pipeline whose DiT models all 136 channels (a random one here, as the first demo's did in
    effect): its rFID through the transform is the rFID, and its samples put energy where real latents have none."""
    demo = demo_pipeline()
    data = FashionMNIST("test", limit=16)
    with torch.no_grad():
        z = demo.autoencoder.encode(torch.stack([data[i][0] for i in range(16)]))
    stats = LatentStatistics(z.mean((0, 2, 3)), z.std((0, 2, 3)))
    pipe = SVGPipeline(demo.autoencoder, random_dit(136), stats, demo.class_names, SamplingDefaults(num_steps=2, shift=2.0))
    results = diagnose(pipe, "fashion_mnist:test", limit=16, num_samples=8, num_steps=2, pca_components=8,
                       noise_levels=(), batch_size=16, progress=False)
    assert results["transform"] == "per_channel" and results["pca_components"] == 8
    assert results["rfid_through_transform"] == pytest.approx(results["rfid"], rel=1e-3)
    assert results["off_subspace_energy_ratio"] > 2 and results["position_frechet"] > results["position_frechet_real_halves"]
