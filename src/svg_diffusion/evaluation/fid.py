"""Fréchet Inception Distance: Gaussian statistics of features, and the Fréchet distance between two of them.

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))

Everything after feature extraction is float64: with fewer samples than the 2048 feature dims the covariances
are singular, and float32 statistics move FID by about 1%.

The trace term is computed as tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)) = sum of the square roots of the eigenvalues
of a symmetric positive semi-definite matrix. It equals tr(sqrtm(S_a S_b)) exactly in exact arithmetic
(the two matrices are similar), but needs no non-symmetric ``scipy.linalg.sqrtm``: there are no spurious
imaginary parts to discard and no epsilon to add to singular covariances, and round-off that makes an
eigenvalue slightly negative is clipped to zero. tests/test_evaluation_fid.py checks it against the
``scipy.linalg.sqrtm`` formula of pytorch-fid / ADM.

Sources (see ``sources.py``) are folders, ``.npz`` images (``arr_0``), tensors, datasets and the named splits
``fashion_mnist:train|test``; an ``.npz`` with ``mu`` and ``sigma`` is used as precomputed statistics.
Inception features of a named split are cached on disk under ``<cache_dir>/inception/``, keyed by split,
image size and image count, because the reference side of FID is recomputed for every evaluation otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SVGError
from ..utils.files import atomic_path
from .features import FeatureFn, Pooling, extract_features
from .inception import InceptionFeatures
from .sources import dataset_split_name, is_stats_file, open_image_source


@dataclass(frozen=True)
class FeatureStats:
    """Mean [D] and covariance [D, D] (float64, unbiased) of ``count`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray) -> "FeatureStats":
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise SVGError(f"statistics need features [N >= 2, D], got shape {feats.shape}")
        return cls(mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), count=len(feats))

    def save(self, path: str | Path) -> None:
        """Write ``mu``, ``sigma`` and ``count`` to an ``.npz`` (atomically); it can be given as a FID source."""
        _atomic_savez(Path(path), mu=self.mu, sigma=self.sigma, count=np.int64(self.count))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            count = int(data["count"]) if "count" in data.files else -1  # -1: not recorded (foreign file)
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise SVGError(f"{path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} are not [D] and [D, D]")
        return cls(mu=mu, sigma=sigma, count=count)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (round-off negatives clipped)."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (float64; see the module docstring)."""
    if a.mu.shape != b.mu.shape:
        raise SVGError(f"cannot compare statistics of {a.mu.shape[0]}-d and {b.mu.shape[0]}-d features")
    sqrt_a = _psd_sqrt(a.sigma)
    middle = sqrt_a @ b.sigma @ sqrt_a
    trace_sqrt_product = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt_product)


def default_cache_dir() -> Path:
    """``$SVG_DIFFUSION_CACHE`` or ``~/.cache/svg_diffusion``."""
    return Path(os.environ.get("SVG_DIFFUSION_CACHE", Path.home() / ".cache" / "svg_diffusion"))


def _atomic_savez(path: Path, **arrays) -> None:
    # Through a file handle: given a path, np.savez would append ".npz" to the temporary name.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def source_features(
    source,
    feature_fn: FeatureFn | None = None,
    *,
    mode: Pooling = "pooled",
    image_size: int = 32,
    limit: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Features [N, D] float32 of an image source: Inception pool features by default, else ``feature_fn``'s.

    ``image_size`` applies to named splits, ``limit`` (the first N images) to every source. Inception features
    of a named split are read from / written to the cache unless ``cache=False``.
    """
    dataset = open_image_source(source, image_size, limit)
    cache_path = None
    split = dataset_split_name(source)
    if cache and split is not None and (feature_fn is None or isinstance(feature_fn, InceptionFeatures)):
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache_path = directory / "inception" / f"fashion_mnist-{split}_{image_size}px_{len(dataset)}.npz"
        if cache_path.is_file():
            with np.load(cache_path, allow_pickle=False) as data:
                return torch.from_numpy(data["features"])
    if feature_fn is None:
        feature_fn = InceptionFeatures().to(device)
    features, _ = extract_features(
        feature_fn, dataset, mode=mode, batch_size=batch_size, device=device, desc="features", progress=progress
    )
    if cache_path is not None:
        _atomic_savez(cache_path, features=features.numpy())
    return features


def fid_stats(source, feature_fn: FeatureFn | None = None, **kwargs) -> FeatureStats:
    """``FeatureStats`` of a source; ``FeatureStats`` objects and ``.npz`` statistics files are used as they are.

    Keyword arguments are those of ``source_features``.
    """
    if isinstance(source, FeatureStats):
        return source
    if is_stats_file(source):
        return FeatureStats.load(source)
    return FeatureStats.from_features(source_features(source, feature_fn, **kwargs))


def fid(real, fake, feature_fn: FeatureFn | None = None, **kwargs) -> float:
    """FID between two sources (anything ``fid_stats`` takes). With ``feature_fn`` (e.g. a frozen DINO encoder,
    whose output is mean-pooled), the same Fréchet distance in that feature space instead of Inception's.

    Keyword arguments are those of ``source_features``.
    """
    if feature_fn is None:  # one network for both sides
        feature_fn = InceptionFeatures().to(kwargs.get("device", "cpu"))
    return frechet_distance(fid_stats(real, feature_fn, **kwargs), fid_stats(fake, feature_fn, **kwargs))
