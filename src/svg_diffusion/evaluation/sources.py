"""Where the images to evaluate come from, turned into one form: a Dataset of (image [3, H, W] in [-1, 1], label).

Accepted sources (``open_image_source``):

- a folder of image files (png/jpg/jpeg/bmp/webp, searched recursively, sorted by path): the raw pixels, RGB,
  no crop or resize, so every image must have the same size (a folder of generated samples). For real photos
  of mixed sizes use ``data.ImageFolder``, which center-crops and resizes, and pass the dataset itself;
- an ``.npz`` holding uint8 images under ``arr_0`` in NHWC order (the ADM / guided-diffusion convention);
- ``"fashion_mnist:train"`` or ``"fashion_mnist:test"``: the dataset split at ``image_size``;
- a tensor [N, C, H, W], float in [-1, 1] or uint8, or a numpy uint8 array [N, H, W, C] (NHWC, as ``arr_0``);
- any torch Dataset whose items are (image in [-1, 1], label).

uint8 pixels p become ``p / 127.5 - 1``, which the Inception pipeline maps back to exactly p, so a tensor, an
``.npz`` and a folder of PNGs holding the same pixels give the same features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import SVGError
from ..utils.images import from_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DATASET_PREFIX = "fashion_mnist:"


class TensorImages(Dataset):
    """Images held in memory: [N, C, H, W] (float in [-1, 1] or uint8) with C in {1, 3}; labels are -1."""

    def __init__(self, images: torch.Tensor):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise SVGError(f"image tensor must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        image = from_uint8(image) if image.dtype == torch.uint8 else image.float()
        return image.expand(3, -1, -1), -1


def nhwc_uint8_images(array: np.ndarray, name: str) -> TensorImages:
    """A uint8 NHWC array (the ``arr_0`` convention) as a dataset, without copying the pixels."""
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise SVGError(f"{name}: expected uint8 images [N, H, W, 1 or 3], got {array.dtype} {array.shape}")
    return TensorImages(torch.from_numpy(array).permute(0, 3, 1, 2))


class ImageFiles(Dataset):
    """The image files under ``root`` (recursive, sorted), as raw RGB pixels; all must share one size."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.paths:
            raise SVGError(f"{self.root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
        self.size = self._open(self.paths[0]).size

    def _open(self, path: Path) -> Image.Image:
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as err:
            raise SVGError(f"{path}: cannot read image ({err})") from err

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self._open(self.paths[index])
        if image.size != self.size:
            raise SVGError(
                f"{self.paths[index]}: size {image.size} differs from {self.size} of {self.paths[0].name}; "
                "a sample folder must hold one image size (use data.ImageFolder for mixed-size photos)"
            )
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        return from_uint8(pixels), -1


def is_stats_file(source) -> bool:
    """True for an ``.npz`` of precomputed statistics (keys ``mu`` and ``sigma``) rather than images."""
    if not isinstance(source, (str, Path)) or Path(source).suffix != ".npz" or not Path(source).is_file():
        return False
    with np.load(source, allow_pickle=False) as data:
        return "mu" in data.files and "sigma" in data.files


def dataset_split_name(source) -> str | None:
    """``"test"`` for the source ``"fashion_mnist:test"`` (a named split, whose features may be cached), else None."""
    if isinstance(source, str) and source.startswith(DATASET_PREFIX):
        return source[len(DATASET_PREFIX):]
    return None


def _open_npz_images(path: Path) -> TensorImages:
    with np.load(path, allow_pickle=False) as data:
        if "arr_0" not in data.files:
            raise SVGError(f"{path}: expected images under 'arr_0' or statistics 'mu' and 'sigma', found {data.files}")
        return nhwc_uint8_images(data["arr_0"], str(path))


def open_image_source(source, image_size: int = 32, limit: int | None = None) -> Dataset:
    """Any accepted source (see the module docstring) as a Dataset of (image in [-1, 1], label), first ``limit`` items."""
    split = dataset_split_name(source)
    if split is not None:
        from ..data import FashionMNIST

        if split not in ("train", "test"):
            raise SVGError(f"unknown split {split!r} in {source!r}: use fashion_mnist:train or fashion_mnist:test")
        dataset = FashionMNIST(split, image_size=image_size)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            dataset = ImageFiles(path)
        elif path.suffix == ".npz" and path.is_file():
            dataset = _open_npz_images(path)
        else:
            raise SVGError(f"image source {str(source)!r} is not a folder, an .npz file or fashion_mnist:<split>")
    elif isinstance(source, torch.Tensor):
        dataset = TensorImages(source)
    elif isinstance(source, np.ndarray):
        dataset = nhwc_uint8_images(source, "image array")
    elif isinstance(source, Dataset):
        dataset = source
    else:
        raise SVGError(f"unsupported image source of type {type(source).__name__}")
    if limit is not None:
        if limit > len(dataset):
            raise SVGError(f"asked for {limit} images but the source has only {len(dataset)}")
        dataset = Subset(dataset, range(limit))
    return dataset
