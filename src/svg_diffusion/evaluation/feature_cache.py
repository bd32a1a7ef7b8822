"""On-disk cache of the Inception features and statistics of image sources, keyed by the pixels themselves.

Inception on a CPU runs at ~15 images/s, so the reference side of FID (a dataset split, a folder of real
images) is worth computing once. An entry is ``<cache_dir>/inception/<key>.npz`` holding ``features``
[N, 2048] float32, their statistics ``mu`` and ``sigma`` (float64), ``count`` and ``source`` (a
human-readable name; never part of the key).

The key is a SHA-256 over: ``CACHE_FORMAT`` (changed whenever the feature pipeline changes), the SHA-1 of the
Inception weights, and the exact uint8 pixels the network is fed, image by image in order with their shapes.
So every change that could change the features gives a new key: an edited, added or removed file, another
split, ``limit`` or ``image_size``, a change to the dataset code's resizing. A stale entry is never read
again; reading an entry marks it used (its modification time), so :meth:`FeatureCache.prune` (the CLI's
``svg-diffusion feature-cache --older-than DAYS``) can drop the entries nobody has read for a while. Computing
the key costs one decoding pass over the source (about 1 s for the 10k Fashion-MNIST test images), which is
small next to Inception itself.

Not part of the key: the device and the batch size, which change features only by float round-off.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..errors import SVGError
from ..utils.checks import check_number
from .inception import WEIGHTS_SHA1, quantize_to_uint8_levels
from .sources import open_npz, save_npz

CACHE_FORMAT = "svg-diffusion inception features v1"
HASH_BATCH = 256


def default_cache_dir() -> Path:
    """``$SVG_DIFFUSION_CACHE`` or ``~/.cache/svg_diffusion``."""
    return Path(os.environ.get("SVG_DIFFUSION_CACHE", Path.home() / ".cache" / "svg_diffusion"))


@torch.no_grad()
def inception_cache_key(dataset: Dataset, progress: bool | None = None) -> str:
    """The cache key of ``dataset``'s Inception features (see the module docstring)."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}\n{WEIGHTS_SHA1}\n".encode())
    loader = DataLoader(dataset, batch_size=HASH_BATCH, shuffle=False, num_workers=0)
    for images, _ in tqdm(loader, desc="hashing pixels", disable=None if progress is None else not progress):
        pixels = quantize_to_uint8_levels(images).to(torch.uint8).numpy()
        digest.update(np.asarray(pixels.shape, dtype=np.int64).tobytes())
        digest.update(pixels.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    source: str  # the human-readable name it was computed from
    count: int  # images
    size_bytes: int
    last_used: float  # seconds since the epoch: the last read or write

    @property
    def idle_days(self) -> float:
        return (time.time() - self.last_used) / 86400


class FeatureCache:
    """The entries under ``<directory>/inception``; ``directory`` defaults to ``default_cache_dir()``."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = (Path(directory) if directory is not None else default_cache_dir()) / "inception"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def load(self, key: str, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        """The arrays ``names`` of entry ``key``, or None when there is no (readable, complete) entry."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with open_npz(path) as data:
                arrays = {name: data[name] for name in names}
        except (SVGError, KeyError) as err:  # a damaged entry is recomputed, never trusted
            warnings.warn(f"ignoring the damaged cache entry {path} ({err}); it will be recomputed")
            return None
        try:
            os.utime(path)  # "last used", for prune(); a read-only cache is still read
        except OSError:
            pass
        return arrays

    def save(self, key: str, **arrays: np.ndarray | str | int) -> Path:
        """Write entry ``key`` atomically (a concurrent reader sees the old entry or the whole new one)."""
        return save_npz(self.path(key), **arrays)

    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first."""
        found = []
        for path in self.directory.glob("*.npz"):
            try:
                with open_npz(path) as data:
                    source, count = str(data["source"]), int(data["count"])
            except (SVGError, KeyError):
                source, count = "(unreadable, or of an older version)", 0
            stat = path.stat()
            found.append(CacheEntry(path, source, count, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda entry: entry.last_used)

    def prune(self, older_than_days: float = 0.0) -> list[CacheEntry]:
        """Delete the entries not used for more than ``older_than_days`` days (0: all); return them."""
        check_number("older_than_days", older_than_days, at_least=0)
        removed = [entry for entry in self.entries() if entry.idle_days > older_than_days]
        for entry in removed:
            entry.path.unlink(missing_ok=True)
        return removed
