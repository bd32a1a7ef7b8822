"""`svg-diffusion diagnose` on the shipped demo pipeline and real Fashion-MNIST test images (small counts: the
numbers are biased at this size, the test checks that every measurement is there and is what it says)."""

import json

import pytest
import torch
from PIL import Image

from svg_diffusion.cli import main
from svg_diffusion.data import FashionMNIST
from svg_diffusion.demo import demo_pipeline
from svg_diffusion.diffusion.latent_transform import fit_pca
from svg_diffusion.evaluation.diagnose import diagnose, format_diagnosis

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = {"rfid", "rfid_through_transform", "rfid_through_pca", "rfid_noise", "fid", "precision", "recall",
        "latent_std_real", "latent_std_generated", "position_frechet", "position_frechet_real_halves",
        "off_subspace_energy_ratio", "spectrum", "explained_variance", "pca_components", "transform",
        "modelled_channels", "latent_channels", "images", "samples", "real"}


def test_diagnose_command_on_the_demo_pipeline(tmp_path, capsys, fmnist_dir):
    args = ["diagnose", "--pipeline", "demo-pipeline", "--real", "fashion_mnist:test", "--limit", "24", "--samples", "12",
            "--steps", "2", "--out-dir", str(tmp_path), "--batch-size", "24", "--components", "8", "--json"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(results) and results == json.loads((tmp_path / "diagnose.json").read_text())
    assert results["transform"] == "per_channel" and results["modelled_channels"] == results["latent_channels"] == 136
    assert results["pca_components"] == 8 and results["images"] == 24 and results["samples"] == 12
    assert results["rfid"] == results["rfid_through_transform"] > 0
    assert list(results["rfid_noise"]) == ["0.1", "0.2", "0.4"]
    assert list(results["spectrum"]) == ["0.5", "0.8", "0.9", "0.95", "0.99"]
    ks = list(results["spectrum"].values())
    assert ks == sorted(ks) and 1 <= ks[0] and ks[-1] <= 136 and len(results["explained_variance"]) == 136
    # a DiT that has not learned to keep the empty directions empty (the shipped one) is seen as such
    assert results["off_subspace_energy_ratio"] > 2 and results["latent_std_generated"] > results["latent_std_real"]
    assert results["position_frechet"] > results["position_frechet_real_halves"]
    with Image.open(tmp_path / "spectrum.png") as image:
        assert image.width > 300
    table = format_diagnosis(results)
    assert "rFID through top-8 PCA" in table and "off-subspace energy (top-8)" in table


def test_diagnose_through_a_pca_transform(fmnist_dir):
    """A pipeline with a PCA transform: its rFID through the transform is that of the projected latents."""
    pipe = demo_pipeline()
    data = FashionMNIST("test", limit=16)
    with torch.no_grad():
        z = pipe.autoencoder.encode(torch.stack([data[i][0] for i in range(16)]))
    pca = fit_pca([z], 136, components=136)  # k = C: the DiT (in_channels 136) still fits, the map is the identity
    pipe.latent_transform = pca
    results = diagnose(pipe, "fashion_mnist:test", limit=16, num_samples=4, num_steps=1, noise_levels=(), batch_size=16,
                       progress=False)
    assert results["transform"] == "pca" and results["pca_components"] == 136
    assert results["rfid_through_transform"] == pytest.approx(results["rfid"], rel=1e-3)
