"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, parsed with numpy).

70k 28x28 grayscale clothing pictures (60k train / 10k test), 10 classes, black background. The whole split
is kept in memory as uint8 (47 MB for train) and converted per item, which is far faster than decoding files.

Sizes: the 28x28 picture is centred on a 32x32 black canvas (2 px each side), the framing every size shares:
``image_size=32`` is that canvas, any other size is the canvas resized (bilinear, antialiased when
shrinking), and ``image_size=28`` gives the original pixels. Grayscale is replicated to 3 channels.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import SVGError
from ..utils.images import from_uint8

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NATIVE_SIZE = 28
CANVAS_SIZE = 32
UBYTE_CODE = 0x08  # IDX type code of unsigned bytes
INSTALL_HINT = "`make setup` or `sudo apt-get install dataset-fashion-mnist` installs it"


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array with ``ndim`` dimensions from a file (gzip-compressed when named *.gz).

    IDX layout: two zero bytes, a type code (0x08 for uint8), the number of dimensions, one big-endian
    int32 per dimension, then the values in C order.
    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise SVGError(f"{path}: cannot be read ({err})") from None
    header_size = 4 + 4 * ndim
    if len(data) < header_size or data[:4] != bytes([0, 0, UBYTE_CODE, ndim]):
        raise SVGError(f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s) (magic {data[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected, found = int(np.prod(shape)), len(data) - header_size
    if found != expected:
        raise SVGError(f"{path}: header says {shape} = {expected} bytes of data, file has {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def find_split_file(root: Path, stem: str) -> Path:
    """``root/stem.gz``, or the uncompressed ``root/stem``; a clear error naming the fix when neither exists."""
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            return path
    raise SVGError(f"Fashion-MNIST file {root / stem}.gz not found; {INSTALL_HINT}")


class FashionMNIST(Dataset):
    """Fashion-MNIST split as a Dataset of (image float32 [3, S, S] in [-1, 1], label int).

    Attributes: ``classes`` (the 10 names, index = label), ``labels`` (LongTensor [N]), ``image_size``,
    ``gray`` (the original pictures, uint8 [N, 28, 28]).
    ``limit`` keeps the first N images of the split. ``as_uint8()`` gives the whole split at once.
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = CANVAS_SIZE,
        root: str | Path = DEFAULT_DIR,
        limit: int | None = None,
    ):
        if split not in SPLIT_FILES:
            raise SVGError(f"Fashion-MNIST split {split!r} does not exist (choose 'train' or 'test')")
        if image_size < 1:
            raise SVGError(f"Fashion-MNIST image_size must be positive, got {image_size}")
        if limit is not None and limit < 1:
            raise SVGError(f"Fashion-MNIST limit must be positive, got {limit}")
        images_stem, labels_stem = SPLIT_FILES[split]
        images = read_idx(find_split_file(Path(root), images_stem), ndim=3)
        labels = read_idx(find_split_file(Path(root), labels_stem), ndim=1)
        if images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE) or len(images) != len(labels) or labels.max() >= len(CLASSES):
            raise SVGError(
                f"Fashion-MNIST {split} files in {root} hold {images.shape} images and {len(labels)} labels "
                f"(max {labels.max()}), expected N x 28 x 28 images, N labels below {len(CLASSES)}"
            )
        self.split = split
        self.image_size = image_size
        self.classes = list(CLASSES)
        self.gray = torch.from_numpy(images[:limit].copy())  # uint8 [N, 28, 28]
        self.labels = torch.from_numpy(labels[:limit].astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.render(self.gray[index].unsqueeze(0))  # [1, S, S]
        return from_uint8(pixels).repeat(3, 1, 1), int(self.labels[index])

    def render(self, gray: torch.Tensor) -> torch.Tensor:
        """Native uint8 pictures [n, 28, 28] at this dataset's size: uint8 [n, S, S] (see the module docstring)."""
        if self.image_size == NATIVE_SIZE:
            return gray
        pad = (CANVAS_SIZE - NATIVE_SIZE) // 2
        canvas = F.pad(gray, (pad, pad, pad, pad), value=0)  # 0 is the black background
        if self.image_size == CANVAS_SIZE:
            return canvas
        resized = F.interpolate(
            canvas.unsqueeze(1).float(), size=(self.image_size, self.image_size), mode="bilinear",
            antialias=True, align_corners=False,
        )
        return resized.squeeze(1).round().clamp(0, 255).to(torch.uint8)

    def as_uint8(self, chunk_size: int = 4096) -> torch.Tensor:
        """The whole split as uint8 [N, 3, S, S] (e.g. for FID references); equal to the items, pixel for pixel.

        The 3 channels are a broadcast view of one gray plane (call ``.contiguous()`` to own the memory).
        """
        planes = torch.cat([self.render(chunk) for chunk in self.gray.split(chunk_size)])
        return planes.unsqueeze(1).expand(-1, 3, -1, -1)
