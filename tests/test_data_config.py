"""DataConfig validation, build_dataset on real data and folders, and the deterministic batch flip."""

import pytest
import torch
from PIL import Image

from svg_diffusion.config import ConfigError, from_dict
from svg_diffusion.data import DataConfig, FashionMNIST, ImageFolder, build_dataset, random_hflip
from svg_diffusion.errors import SVGError


def test_config_from_dict_and_its_invariants():
    cfg = from_dict(DataConfig, {"source": "image_folder", "root": "/data/imagenet", "image_size": 256, "hflip": True})
    assert cfg.image_size == 256 and cfg.hflip and cfg.labelled and cfg.limit is None
    with pytest.raises(ConfigError, match="source: expected one of"):
        from_dict(DataConfig, {"source": "mnist"})
    with pytest.raises(ConfigError, match="root is required"):
        from_dict(DataConfig, {"source": "image_folder"})
    with pytest.raises(ConfigError, match="image_size must be an integer >= 1, got 0"):
        from_dict(DataConfig, {"source": "fashion_mnist", "image_size": 0})
    with pytest.raises(ConfigError, match="limit must be an integer >= 1, got 0"):
        from_dict(DataConfig, {"source": "fashion_mnist", "limit": 0})
    with pytest.raises(ConfigError, match="check: expected one of"):
        from_dict(DataConfig, {"source": "image_folder", "root": "x", "check": "verify"})
    with pytest.raises(ValueError, match="source must be one of"):  # built in code, without from_dict
        DataConfig(source="cifar")


def test_build_fashion_mnist(fmnist_dir):
    dataset = build_dataset(DataConfig("fashion_mnist", root=str(fmnist_dir), image_size=28, limit=10), "test")
    assert isinstance(dataset, FashionMNIST) and len(dataset) == 10 and dataset[0][0].shape == (3, 28, 28)
    with pytest.raises(SVGError, match="split 'validation'"):
        build_dataset(DataConfig("fashion_mnist"), "validation")


def make_tree(root):
    for path in ("train/cat/0.png", "train/dog/0.png", "train/dog/1.png", "val/cat/0.png", "val/dog/0.png"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10)).save(root / path)


def test_build_image_folder_uses_split_subfolders(tmp_path):
    make_tree(tmp_path)
    cfg = DataConfig("image_folder", root=str(tmp_path), image_size=8)
    train, test = build_dataset(cfg, "train", progress=False), build_dataset(cfg, "test", progress=False)
    assert isinstance(train, ImageFolder) and train.classes == test.classes == ["cat", "dog"]
    assert len(train) == 3 and len(test) == 2 and test.root == tmp_path / "val"


def test_build_image_folder_without_split_subfolders_serves_every_split(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "a_empty.png").write_bytes(b"")  # sorts first, so the limit meets it
    cfg = DataConfig("image_folder", root=str(tmp_path / "train"), image_size=8, labelled=False, check="size", limit=2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        dataset = build_dataset(cfg, "test", progress=False)
    assert len(dataset) == 2 and dataset.labels.tolist() == [-1, -1]


def test_build_image_folder_missing_split_is_an_error(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(SVGError, match="none for split 'test'"):
        build_dataset(DataConfig("image_folder", root=str(tmp_path)), "test")


def batch_of_distinct_images(count=16):
    return torch.arange(count * 3 * 4 * 5, dtype=torch.float32).reshape(count, 3, 4, 5)


def test_random_hflip_is_deterministic_and_flips_whole_images():
    images = batch_of_distinct_images()
    first = random_hflip(images, torch.Generator().manual_seed(3))
    again = random_hflip(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    expected = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5
    flipped = torch.tensor([torch.equal(f, x.flip(-1)) for f, x in zip(first, images)])
    kept = torch.tensor([torch.equal(f, x) for f, x in zip(first, images)])
    assert torch.equal(flipped, expected) and torch.equal(kept, ~expected)
    assert 0 < expected.sum() < 16
    other_seed = random_hflip(images, torch.Generator().manual_seed(4))
    assert not torch.equal(first, other_seed)


def test_random_hflip_slices_of_a_global_batch_match_the_whole():
    images = batch_of_distinct_images()
    whole = random_hflip(images, torch.Generator().manual_seed(7))
    halves = [
        random_hflip(images[offset : offset + 8], torch.Generator().manual_seed(7), global_batch_size=16, offset=offset)
        for offset in (0, 8)
    ]
    assert torch.equal(torch.cat(halves), whole)
    with pytest.raises(ValueError, match="outside a global batch"):
        random_hflip(images[:8], torch.Generator(), global_batch_size=16, offset=9)
