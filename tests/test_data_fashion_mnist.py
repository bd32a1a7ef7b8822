"""Fashion-MNIST read from the real Debian files: shapes, ranges, labels, framing, and file errors."""

import gzip

import numpy as np
import pytest
import torch

from svg_diffusion.data import FASHION_MNIST_CLASSES, FashionMNIST
from svg_diffusion.errors import SVGError


@pytest.fixture(scope="module")
def test_split(fmnist_dir):
    return FashionMNIST("test", root=fmnist_dir)


def raw_test_images(fmnist_dir):
    data = gzip.decompress((fmnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, 28, 28)


def test_splits_have_the_published_sizes_and_balanced_labels(fmnist_dir, test_split):
    train = FashionMNIST("train", root=fmnist_dir)
    assert len(train) == 60_000 and len(test_split) == 10_000
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test_split.labels).tolist() == [1000] * 10
    assert train.labels.dtype == torch.long
    assert test_split.classes == FASHION_MNIST_CLASSES
    assert test_split.classes[0] == "T-shirt/top" and test_split.classes[9] == "Ankle boot"
    assert test_split.classes[test_split[0][1]] == "Ankle boot"  # the well-known first test image


def test_items_are_three_channel_images_in_range(test_split):
    image, label = test_split[123]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert isinstance(label, int) and label == int(test_split.labels[123])


def test_size_32_pads_the_28_pixel_picture_with_black(fmnist_dir, test_split):
    raw = raw_test_images(fmnist_dir)
    for index in (0, 1, 9999):
        image = test_split[index][0][0]
        assert torch.all(image[:2] == -1) and torch.all(image[-2:] == -1)
        assert torch.all(image[:, :2] == -1) and torch.all(image[:, -2:] == -1)
        assert torch.equal(image[2:30, 2:30], torch.from_numpy(raw[index].copy()).float() / 127.5 - 1)


def test_size_28_gives_the_original_pixels(fmnist_dir):
    raw = raw_test_images(fmnist_dir)
    dataset = FashionMNIST("test", image_size=28, root=fmnist_dir, limit=3)
    assert len(dataset) == 3
    assert torch.equal(((dataset[2][0][0] + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(raw[2].copy()))


def test_other_sizes_resize_the_padded_canvas(fmnist_dir):
    dataset = FashionMNIST("test", image_size=64, root=fmnist_dir, limit=50)
    image = dataset[0][0]
    assert image.shape == (3, 64, 64)
    assert torch.all(image[:, :3] == -1) and torch.all(image[:, :, -3:] == -1)  # the 2 px border, doubled
    assert image.max() > 0.5  # the garment survived the resize


@pytest.mark.parametrize("image_size", [32, 48])
def test_as_uint8_matches_the_items(fmnist_dir, image_size):
    dataset = FashionMNIST("test", image_size=image_size, root=fmnist_dir, limit=40)
    pixels = dataset.as_uint8(chunk_size=16)
    assert pixels.shape == (40, 3, image_size, image_size) and pixels.dtype == torch.uint8
    for index in (0, 17, 39):
        assert torch.equal(pixels[index].float() / 127.5 - 1, dataset[index][0])


def test_uncompressed_idx_files_are_read(fmnist_dir, tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        data = gzip.decompress((fmnist_dir / f"{name}.gz").read_bytes())
        (tmp_path / name).write_bytes(data)
    copy, real = FashionMNIST("test", root=tmp_path, limit=5), FashionMNIST("test", root=fmnist_dir, limit=5)
    assert torch.equal(copy.gray, real.gray) and torch.equal(copy.labels, real.labels)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(SVGError, match="make setup"):
        FashionMNIST("test", root=tmp_path)


def test_bad_split_and_size_are_errors(fmnist_dir):
    with pytest.raises(SVGError, match="split 'val'"):
        FashionMNIST("val", root=fmnist_dir)
    with pytest.raises(SVGError, match="image_size"):
        FashionMNIST("test", image_size=0, root=fmnist_dir)


def write_idx(path, magic: bytes, dims, payload: bytes):
    header = magic + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + payload))


def test_corrupt_idx_files_are_named(fmnist_dir, tmp_path):
    labels = (fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"

    write_idx(images, bytes([0, 0, 0x0D, 3]), (1, 28, 28), bytes(4 * 784))  # float32 type code
    with pytest.raises(SVGError, match="unsigned-byte IDX file"):
        FashionMNIST("test", root=tmp_path)

    write_idx(images, bytes([0, 0, 8, 3]), (10_000, 28, 28), bytes(784))  # data cut short
    with pytest.raises(SVGError, match="header says"):
        FashionMNIST("test", root=tmp_path)

    write_idx(images, bytes([0, 0, 8, 3]), (2, 28, 28), bytes(2 * 784))  # 2 images for 10k labels
    with pytest.raises(SVGError, match="expected N x 28 x 28"):
        FashionMNIST("test", root=tmp_path)

    images.write_bytes(b"not gzip at all")
    with pytest.raises(SVGError, match="cannot be read"):
        FashionMNIST("test", root=tmp_path)
