"""Where the images to evaluate come from, turned into one form: a Dataset of (image [3, H, W] in [-1, 1], label).

Accepted sources (``open_image_source``):

- a folder of image files (png/jpg/jpeg/bmp/webp, searched recursively, sorted by path, hidden files and
  folders skipped): the raw pixels, RGB, no crop or resize, so every image must have the same size (a folder
  of generated samples). For real photos of mixed sizes use ``data.ImageFolder``, which center-crops and
  resizes, and pass the dataset itself;
- an ``.npz`` holding uint8 images under ``arr_0`` in NHWC order (the ADM / guided-diffusion convention),
  read whole into memory; an ``.npz`` that holds ``mu`` and ``sigma`` is statistics instead (``is_stats_file``;
  FID takes it as it is, see ``fid.fid_stats``);
- ``"fashion_mnist:train"`` or ``"fashion_mnist:test"``: the dataset split at ``image_size``;
- a tensor [N, C, H, W], float in [-1, 1] or uint8, or a numpy uint8 array [N, H, W, C] (NHWC, as ``arr_0``);
- any torch Dataset whose items are (image in [-1, 1], label).

uint8 pixels p become ``p / 127.5 - 1``, which the Inception pipeline maps back to exactly p, so a tensor, an
``.npz`` and a folder of PNGs holding the same pixels give the same features.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import SVGError
from ..utils.files import atomic_path
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
        self.paths = sorted(
            p for p in self.root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
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


@contextmanager
def open_npz(path: str | Path) -> Iterator[np.lib.npyio.NpzFile]:
    """An ``.npz`` file opened for reading arrays by name; an unreadable file is an SVGError.

    ``allow_pickle=False``: a foreign file cannot run code. Keep the block to reading arrays.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise SVGError(f"{path}: not a readable .npz file ({err})") from None


def save_npz(path: str | Path, **arrays) -> Path:
    """Write arrays to an ``.npz`` atomically (a reader sees the old file or the whole new one); return the path."""
    # Through a file handle: given a path, np.savez would append ".npz" to the temporary name.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def is_stats_file(source) -> bool:
    """True for an ``.npz`` of precomputed statistics (keys ``mu`` and ``sigma``) rather than images.

    An ``.npz`` holding both images and statistics (like the ADM reference batches) counts as statistics.
    """
    if not isinstance(source, (str, Path)) or Path(source).suffix != ".npz" or not Path(source).is_file():
        return False
    with open_npz(source) as data:
        return "mu" in data.files and "sigma" in data.files


def dataset_split_name(source) -> str | None:
    """``"test"`` for the source ``"fashion_mnist:test"``, else None."""
    if isinstance(source, str) and source.startswith(DATASET_PREFIX):
        return source[len(DATASET_PREFIX):]
    return None


def is_named_source(source) -> bool:
    """True for sources named by a string or path (split, folder, ``.npz``): the ones worth caching, since
    the same name comes back in later evaluations. In-memory tensors and datasets are usually fresh samples."""
    return isinstance(source, (str, Path))


def describe_source(source) -> str:
    """A short human-readable name of a source, for logs and cache entries."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return f"{type(source).__name__} {tuple(source.shape)}"
    return type(source).__name__


def _open_npz_images(path: Path) -> TensorImages:
    with open_npz(path) as data:
        if "arr_0" not in data.files:
            raise SVGError(f"{path}: expected images under 'arr_0' or statistics 'mu' and 'sigma', found {data.files}")
        images = data["arr_0"]
    return nhwc_uint8_images(images, str(path))


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
            raise SVGError(f"image source {str(source)!r} is not an existing folder, an .npz file or fashion_mnist:<split>")
    elif isinstance(source, torch.Tensor):
        dataset = TensorImages(source)
    elif isinstance(source, np.ndarray):
        dataset = nhwc_uint8_images(source, "image array")
    elif isinstance(source, Dataset):
        dataset = source
    else:
        raise SVGError(f"unsupported image source of type {type(source).__name__}")
    if limit is not None:
        if limit < 1:
            raise SVGError(f"limit must be positive, got {limit}")
        if limit > len(dataset):
            raise SVGError(f"asked for {limit} images but the source has only {len(dataset)}")
        dataset = Subset(dataset, range(limit))
    return dataset
