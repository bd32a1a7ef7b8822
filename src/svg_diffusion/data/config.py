"""DataConfig, the ``data:`` section of training and evaluation configs, and ``build_dataset``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from ..config import ConfigPath
from ..errors import SVGError
from ..utils.checks import check_int
from .fashion_mnist import DEFAULT_DIR, FashionMNIST
from .image_folder import CHECKS, ImageFolder

SOURCES = ("fashion_mnist", "image_folder")
# Subfolder names that mark a split layout (ImageNet: train/ and val/); the test split takes the first found.
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}


@dataclass
class DataConfig:
    """Which images a run reads. Datasets are deterministic; ``hflip`` is applied to batches by trainers.

    root: fashion_mnist: the folder of the IDX files (None: the Debian package's folder);
          image_folder: required, either one folder used for every split, or a folder holding
          ``train/`` and ``test/`` (or ``val/``) subfolders, one per split.
    labelled: image_folder only: class-per-subfolder (True) or a flat folder with label -1 (False).
    limit: keep the first N images of a split.
    check: image_folder only: how hard the folder scan looks for unreadable files ("size", "header",
           "decode"; see data.image_folder).
    """

    source: Literal["fashion_mnist", "image_folder"]
    root: ConfigPath | None = None
    image_size: int = 32
    hflip: bool = False
    labelled: bool = True
    limit: int | None = None
    check: Literal["size", "header", "decode"] = "header"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        check_int("image_size", self.image_size, at_least=1)
        if self.source == "image_folder" and not self.root:
            raise ValueError("root is required when source is 'image_folder'")
        if self.limit is not None:
            check_int("limit", self.limit, at_least=1)
        if self.check not in CHECKS:
            raise ValueError(f"check must be one of {', '.join(CHECKS)}, got {self.check!r}")


def split_folder(root: Path, split: str) -> Path:
    """The folder of ``split`` under an image-folder root (see DataConfig.root)."""
    present = [name for names in SPLIT_FOLDERS.values() for name in names if (root / name).is_dir()]
    if not present:
        return root
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    raise SVGError(f"image folder {root} has split folders ({', '.join(present)}) but none for split {split!r} "
                   f"(looked for {', '.join(SPLIT_FOLDERS[split])})")


def build_dataset(cfg: DataConfig, split: str, progress: bool = True) -> Dataset:
    """The dataset ``cfg`` describes, for ``split`` ('train' or 'test'). ``progress``: show the folder scan's bar."""
    if split not in SPLIT_FOLDERS:
        raise SVGError(f"split {split!r} does not exist (choose 'train' or 'test')")
    if cfg.source == "fashion_mnist":
        return FashionMNIST(split, cfg.image_size, root=cfg.root or DEFAULT_DIR, limit=cfg.limit)
    return ImageFolder(split_folder(Path(cfg.root), split), cfg.image_size, labelled=cfg.labelled,
                       limit=cfg.limit, check=cfg.check, progress=progress)
