"""Folders of image files as a Dataset: class-per-subfolder trees (ImageNet layout) or flat unlabelled trees.

Every image goes through the same deterministic path: open with PIL, apply the EXIF orientation, convert
any mode to RGB (``to_rgb``), center-crop-and-resize to ``image_size`` (``center_crop_resize``, the ADM/DiT
recipe), and scale to [-1, 1].

Unreadable files never crash an epoch. They are found in two places, and both land in ``skipped``:
- at construction, a scan drops them with one warning giving the count. ``check`` sets how hard it looks:
  "size" drops zero-byte files only (a stat per file), "header" (default) also files whose header PIL
  cannot identify (about 0.2 ms per file: minutes for ImageNet's 1.28M), "decode" loads every file
  exactly as training will (about 1 ms per file), so the list is complete before training starts;
- at load time, a file that passed the scan but fails to decode (e.g. a truncated JPEG) is reported in a
  warning and replaced by the next readable image (with that image's label), the same replacement every
  time. Load-time failures are counted per process (DataLoader workers each keep their own list).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import SVGError
from ..utils.images import from_uint8
from .transforms import center_crop_resize, to_rgb


# Formats PIL identifies but cannot decode by itself: stubs need an external handler, MPEG is video.
UNDECODABLE_FORMATS = ("MPEG",)


def can_decode(fmt: str) -> bool:
    """Whether this PIL installation can open and decode the format named ``fmt`` on its own."""
    factory = Image.OPEN.get(fmt, (None,))[0]
    stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
    return factory is not None and not stub and fmt not in UNDECODABLE_FORMATS


def image_extensions() -> frozenset[str]:
    """File suffixes (lower case, with the dot) of every format this PIL installation can decode."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if can_decode(fmt))


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, following links, skipping hidden names), sorted."""
    extensions = image_extensions()
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent, f) for f in files if not f.startswith(".") and Path(f).suffix.lower() in extensions]
    return sorted(found)


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """One image file as uint8 [3, image_size, image_size]: EXIF orientation, RGB, ADM/DiT center crop."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
        pixels = center_crop_resize(to_rgb(upright), image_size)
    return torch.from_numpy(pixels).permute(2, 0, 1)


Check = Literal["size", "header", "decode"]
CHECKS = ("size", "header", "decode")


def unreadable_reason(path: Path, image_size: int, check: Check) -> str | None:
    """Why ``path`` cannot be used (None if it can), looking as hard as ``check`` says (see the module docstring)."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        if check == "header":
            Image.open(path).close()  # parses the header only
        elif check == "decode":
            load_image(path, image_size)
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
        return f"{type(err).__name__}: {err}"
    return None


def find_images(root: Path, labelled: bool) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names and the (path, label) of every image file under ``root`` (see ImageFolder)."""
    if not labelled:
        return [], [(path, -1) for path in list_image_files(root)]
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise SVGError(
            f"image folder {root} has no class subfolders; use labelled=False (data.labelled: false) for a flat folder"
        )
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in image_extensions()]
    if loose:
        warnings.warn(f"image folder {root}: ignoring {len(loose)} image file(s) outside class folders", stacklevel=3)
    return classes, [(path, label) for label, name in enumerate(classes) for path in list_image_files(root / name)]


class ImageFolder(Dataset):
    """Images under ``root`` as (image float32 [3, S, S] in [-1, 1], label int).

    ``labelled=True``: each subfolder of ``root`` is a class (sorted names -> indices 0..K-1, files found
    recursively inside); image files directly in ``root`` are ignored with a warning.
    ``labelled=False``: every image under ``root`` (recursively), label -1, ``classes`` empty.
    ``limit`` keeps the first N readable images in sorted path order (so with classes, the first classes).
    ``check`` is how hard the construction scan looks for unreadable files; ``progress`` shows its bar.
    Attributes: ``classes``, ``samples`` (list of (path, label)), ``labels`` (LongTensor [N]), ``skipped``
    (list of (path, reason)). See the module docstring for how unreadable files are handled.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        labelled: bool = True,
        limit: int | None = None,
        check: Check = "header",
        progress: bool = True,
    ):
        root = Path(root)
        if not root.is_dir():
            raise SVGError(f"image folder {root} {'is not a folder' if root.exists() else 'does not exist'}")
        if image_size < 1:
            raise SVGError(f"image folder {root}: image_size must be positive, got {image_size}")
        if limit is not None and limit < 1:
            raise SVGError(f"image folder {root}: limit must be positive, got {limit}")
        if check not in CHECKS:
            raise SVGError(f"image folder {root}: check must be one of {', '.join(CHECKS)}, got {check!r}")
        self.root = root
        self.image_size = image_size
        self.classes, candidates = find_images(root, labelled)
        if not candidates:
            raise SVGError(f"image folder {root} holds no image files (formats PIL can open, e.g. .png .jpg .webp)")

        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        bar_off = None if progress else True  # None: tqdm shows the bar on a terminal only
        for path, label in tqdm(candidates, desc=f"scanning {root.name}", unit="file", disable=bar_off, leave=False):
            if limit is not None and len(self.samples) == limit:
                break
            reason = unreadable_reason(path, image_size, check)
            if reason is None:
                self.samples.append((path, label))
            else:
                self.skipped.append((path, reason))
        if self.skipped:
            first_path, first_reason = self.skipped[0]
            summary = f"{len(self.skipped)} unreadable file(s), e.g. {first_path} ({first_reason})"
            if not self.samples:
                raise SVGError(f"image folder {root}: no image file can be read: {summary}")
            warnings.warn(f"image folder {root}: skipped {summary}; the list is in .skipped", stacklevel=2)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self.failed_indices: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        count = len(self.samples)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} images")
        for step in range(count):
            candidate = (index + step) % count
            if candidate in self.failed_indices:
                continue
            path, label = self.samples[candidate]
            try:
                return from_uint8(load_image(path, self.image_size)), label
            except Exception as err:  # one bad file must not end an epoch: report it and use the next image
                self.failed_indices.add(candidate)
                self.skipped.append((path, f"{type(err).__name__}: {err}"))
                warnings.warn(
                    f"{path} cannot be decoded ({type(err).__name__}: {err}); using the next image instead "
                    f"({len(self.failed_indices)} such file(s) in this process)",
                    stacklevel=2,
                )
        raise SVGError(f"image folder {self.root}: no image can be decoded (see .skipped)")
