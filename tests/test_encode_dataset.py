"""`svg-diffusion encode`: frozen-encoder features of real Fashion-MNIST images and of an image folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from svg_diffusion.cli import main
from svg_diffusion.data import FashionMNIST
from svg_diffusion.encoders import VisionTransformer, get_config, load_encoder, save_encoder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("encoder") / "tiny"
    save_encoder(VisionTransformer(get_config("tiny")), folder)
    return str(folder)


def test_encode_fashion_mnist_writes_features_labels_and_picture(fmnist_dir, tiny_folder, tmp_path, capsys):
    out, picture = tmp_path / "features.safetensors", tmp_path / "features.png"
    status = main(["encode", "--encoder", tiny_folder, "--split", "test", "--limit", "24", "--batch-size", "10",
                   "--out", str(out), "--picture", str(picture)])
    assert status == 0
    assert f"wrote {out}: features [24, 64, 8, 8]" in capsys.readouterr().out

    saved = load_file(out)
    dataset = FashionMNIST("test", image_size=32, root=fmnist_dir, limit=24)
    assert torch.equal(saved["labels"], dataset.labels)
    images = torch.stack([dataset[i][0] for i in range(24)])
    # The same features as one call on all images: batching (10, 10, 4) changes nothing.
    assert torch.allclose(saved["features"], load_encoder(tiny_folder)(images), atol=1e-5)
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata()["encoder"] == tiny_folder

    grid = np.asarray(Image.open(picture).convert("RGB"))
    assert grid.shape[0] > 2 * 32 and grid.shape[1] > 8 * 32  # a row of images above a row of feature maps


def test_encode_layer_option_changes_the_features(fmnist_dir, tiny_folder, tmp_path):
    paths = {layer: tmp_path / f"layer{layer}.safetensors" for layer in (1, 2)}
    for layer, path in paths.items():
        args = ["encode", "--encoder", tiny_folder, "--layer", str(layer), "--limit", "4", "--out", str(path)]
        assert main(args) == 0
    last = tmp_path / "last.safetensors"
    assert main(["encode", "--encoder", tiny_folder, "--limit", "4", "--out", str(last)]) == 0
    first, second = (load_file(paths[layer])["features"] for layer in (1, 2))
    assert torch.equal(second, load_file(last)["features"]) and not torch.allclose(first, second)


def test_encode_reports_user_errors_in_one_line(fmnist_dir, tiny_folder, tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    assert main(["encode", "--encoder", tiny_folder, "--image-size", "30", "--out", out]) == 2
    assert "not a multiple of the encoder's patch size 4" in capsys.readouterr().err
    assert main(["encode", "--encoder", tiny_folder, "--layer", "5", "--out", out]) == 2
    assert "layer 5 is out of range" in capsys.readouterr().err
    assert main(["encode", "--encoder", tiny_folder, "--data", str(tmp_path / "missing"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_encode_image_folder_with_and_without_classes(tiny_folder, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    out = tmp_path / "folder.safetensors"
    assert main(["encode", "--encoder", tiny_folder, "--data", str(tmp_path / "images"), "--image-size", "16",
                 "--out", str(out)]) == 0
    saved = load_file(out)
    assert saved["features"].shape == (6, 64, 4, 4)
    assert saved["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert main(["encode", "--encoder", tiny_folder, "--data", str(tmp_path / "images" / "cats"), "--flat",
                 "--image-size", "16", "--out", str(out)]) == 0
    assert load_file(out)["labels"].tolist() == [-1, -1, -1]
