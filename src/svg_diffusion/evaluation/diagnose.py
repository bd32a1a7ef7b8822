"""Why does a pipeline generate what it generates? ``svg-diffusion diagnose`` / :func:`diagnose`.

One call measures, on real images and on the pipeline's own samples, what separates a weak latent diffusion
model from a good one (docs/evaluation.md, "Diagnosing a pipeline"):

- ``rfid``: FID of decode(encode(x)) against x: the floor the decoder puts under generation FID;
- ``rfid_through_transform``: the same through the pipeline's latent transform (what a perfect DiT could reach:
  a PCA transform drops what lies outside its subspace); ``rfid_through_pca``: through the top-``pca_components``
  directions of the real latents (a diagnostic PCA, for any pipeline);
- ``rfid_noise``: rFID after Gaussian noise of each std is added in the space the DiT models: how much a
  generated latent may be off before the decoder shows it;
- ``fid``, ``precision``, ``recall``: of the pipeline's samples (its defaults, balanced classes, fixed seed);
- ``latent_std_real`` / ``latent_std_generated``: std of the modelled coordinates of real and generated latents
  (a DiT that has learned the distribution gives about the same; more means off-manifold energy);
- ``position_frechet``: Fréchet distance between the per-position latent vectors (standardized per channel,
  pooled over positions) of generated and real images; ``position_frechet_real_halves``: the same between two
  halves of the real set (what sampling noise alone gives);
- ``off_subspace_energy_ratio``: the energy of generated latents outside the diagnostic PCA subspace over that
  of real latents (1 is right; a DiT that fails to keep empty directions empty shows > 1);
- ``spectrum``: the fewest directions that hold 50 / 80 / 90 / 95 / 99% of the latent's variance, and
  ``explained_variance`` (cumulative, per number of directions), drawn as ``spectrum.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..diffusion.latent_transform import (
    CovarianceMoments, PCATransform, choose_components, off_subspace_energy, pca_from_moments,
)
from ..errors import SVGError
from ..pipeline import SVGPipeline
from ..sample_writer import class_labels, sample_noise
from ..utils.files import atomic_path
from .fid import FeatureStats, features_and_stats, frechet_distance
from .inception import InceptionFeatures
from .precision_recall import precision_recall
from .sources import open_image_source

SPECTRUM_FRACTIONS = (0.5, 0.8, 0.9, 0.95, 0.99)
NOISE_LEVELS = (0.1, 0.2, 0.4)
DEFAULT_EXPLAINED = 0.97  # the diagnostic PCA's k when the pipeline has none: about where rFID stops moving
JSON_FILE = "diagnose.json"
SPECTRUM_FILE = "spectrum.png"


@torch.no_grad()
def batched(fn, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` applied to ``tensor`` in slices of ``batch_size`` rows (without gradients), concatenated."""
    return torch.cat([fn(tensor[i : i + batch_size]) for i in range(0, len(tensor), batch_size)])


def _position_vectors(pipeline: SVGPipeline, z: torch.Tensor) -> torch.Tensor:
    """[N * h * w, C] per-channel standardized latent vectors, one per position."""
    u = pipeline.latent_stats.normalize(z)
    return u.permute(0, 2, 3, 1).reshape(-1, u.shape[1]).double()


def _spectrum(eigenvalues: torch.Tensor) -> tuple[dict[str, int], list[float]]:
    cumulative = (torch.cumsum(eigenvalues, 0) / eigenvalues.sum()).tolist()
    return {f"{fraction:g}": choose_components(eigenvalues, explained_variance=fraction)
            for fraction in SPECTRUM_FRACTIONS}, cumulative


def plot_spectrum(cumulative: Sequence[float], path: str | Path, marked: int | None = None) -> Path:
    """A PNG of the cumulative explained variance against the number of PCA directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    k = np.arange(1, len(cumulative) + 1)
    ax.plot(k, cumulative, color="tab:blue")
    for fraction in SPECTRUM_FRACTIONS:
        ax.axhline(fraction, color="0.85", lw=0.8, zorder=0)
    if marked is not None:
        ax.axvline(marked, color="tab:red", lw=1, ls="--", label=f"k = {marked} ({cumulative[marked - 1]:.1%})")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("principal directions per position (k)")
    ax.set_ylabel("explained variance")
    ax.set_ylim(0, 1.01)
    ax.set_title("PCA spectrum of the latent")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def diagnose(pipeline: SVGPipeline, real, *, limit: int = 2000, num_samples: int | None = None,
             pca_components: int | None = None, noise_levels: Sequence[float] = NOISE_LEVELS, seed: int = 0,
             num_steps: int | None = None, batch_size: int = 100, out_dir: str | Path | None = None,
             progress: bool | None = None) -> dict:
    """The measurements of the module docstring, as a dict (JSON-ready); see there for each key.

    ``real``: any image source ``open_image_source`` takes (``"fashion_mnist:test"``, a folder, an npz), its
    first ``limit`` images; ``num_samples`` (default: as many) are drawn with the pipeline's defaults
    (``num_steps`` overrides its steps) from seed ``seed``, balanced over classes. ``pca_components``: the
    diagnostic PCA's k (default: the pipeline's own PCA k, else the fewest directions holding 97%).
    ``out_dir``: also write ``diagnose.json`` and ``spectrum.png`` there.
    """
    if pipeline.transformer is None:
        raise SVGError("diagnose needs a pipeline with a transformer (this one only encodes and decodes)")
    if any(not np.isfinite(level) or level < 0 for level in noise_levels):
        raise SVGError(f"noise levels must be finite and non-negative, got {list(noise_levels)}")
    autoencoder, transform, device = pipeline.autoencoder, pipeline.latent_transform, pipeline.device
    image_size = autoencoder.config.image_size
    dataset = open_image_source(real, image_size, limit)
    if len(dataset) < 4:
        raise SVGError(f"diagnose needs at least 4 real images, {real!r} has {len(dataset)}")
    num_samples = len(dataset) if num_samples is None else num_samples
    if num_samples < 2:
        raise SVGError(f"diagnose needs at least 2 samples, got {num_samples}")
    quiet = None if progress is None else not progress
    inception = InceptionFeatures().to(device)

    def inception_stats(images: torch.Tensor) -> tuple[torch.Tensor, FeatureStats]:
        features = batched(lambda x: inception(x.to(device)).double().cpu(), images, batch_size)
        return features, FeatureStats.from_features(features)

    def decoded(z: torch.Tensor) -> torch.Tensor:
        return batched(lambda b: autoencoder.decode(b.to(device)).clamp(-1, 1).cpu(), z, batch_size)

    # Real images: their latents and Inception statistics (cached for named sources, like `evaluate`).
    images = torch.cat([batch for batch, _ in tqdm(DataLoader(dataset, batch_size=batch_size), desc="encoding",
                                                   disable=quiet)])
    z_real = batched(lambda x: autoencoder.encode(x.to(device)).float().cpu(), images, batch_size)
    real_features, real_stats = features_and_stats(real, inception, image_size=image_size, limit=limit,
                                                   batch_size=batch_size, device=device, progress=progress)

    def rfid(z: torch.Tensor) -> float:
        return max(0.0, frechet_distance(real_stats, inception_stats(decoded(z))[1]))

    # The diagnostic PCA: the whole spectrum, and the subspace of the pipeline's k (or of 97% of the variance).
    moments = CovarianceMoments(z_real.shape[1])  # one pass over the latents serves both fits below
    moments.add(z_real)
    spectrum_pca = pca_from_moments(moments)
    spectrum, cumulative = _spectrum(spectrum_pca.eigenvalues)
    if pca_components is None:
        pca_components = (transform.channels if isinstance(transform, PCATransform)
                          else choose_components(spectrum_pca.eigenvalues, explained_variance=DEFAULT_EXPLAINED))
    subspace = pca_from_moments(moments, components=pca_components)

    results: dict = {"real": str(real), "images": len(dataset), "samples": num_samples,
                     "transform": transform.kind, "modelled_channels": transform.channels,
                     "latent_channels": transform.latent_channels, "pca_components": pca_components}
    results["rfid"] = rfid(z_real)
    results["rfid_through_transform"] = (results["rfid"] if transform.kind == "per_channel"
                                         else rfid(transform.decode(transform.encode(z_real))))
    results["rfid_through_pca"] = rfid(subspace.decode(subspace.encode(z_real)))
    x_real = transform.encode(z_real)
    noise_generator = torch.Generator().manual_seed(seed)
    results["rfid_noise"] = {
        f"{level:g}": rfid(transform.decode(x_real + level * torch.randn(x_real.shape, generator=noise_generator)))
        for level in noise_levels
    }

    # Generated latents, the pipeline's defaults.
    labels = class_labels(pipeline, num=num_samples)
    z_generated = torch.cat([
        pipeline(labels[i : i + batch_size], latents=sample_noise(pipeline, range(i, min(i + batch_size, num_samples)), seed),
                 num_steps=num_steps, output_type="latent").cpu()
        for i in tqdm(range(0, num_samples, batch_size), desc="sampling", disable=quiet)
    ])
    generated_features, generated_stats = inception_stats(decoded(z_generated))
    results["fid"] = max(0.0, frechet_distance(real_stats, generated_stats))
    results["precision"], results["recall"] = precision_recall(real_features, generated_features.float())
    results["latent_std_real"] = float(x_real.std())
    results["latent_std_generated"] = float(transform.encode(z_generated).std())

    real_vectors, generated_vectors = _position_vectors(pipeline, z_real), _position_vectors(pipeline, z_generated)
    half = len(z_real) // 2
    results["position_frechet"] = frechet_distance(FeatureStats.from_features(real_vectors.numpy()),
                                                   FeatureStats.from_features(generated_vectors.numpy()))
    results["position_frechet_real_halves"] = frechet_distance(
        FeatureStats.from_features(_position_vectors(pipeline, z_real[:half]).numpy()),
        FeatureStats.from_features(_position_vectors(pipeline, z_real[half:]).numpy()))
    results["off_subspace_energy_ratio"] = float(off_subspace_energy(subspace, z_generated)
                                                 / off_subspace_energy(subspace, z_real).clamp_min(1e-30))
    results["spectrum"] = spectrum
    results["explained_variance"] = [round(value, 6) for value in cumulative]

    if out_dir is not None:
        out_dir = Path(out_dir)
        with atomic_path(out_dir / JSON_FILE) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
        plot_spectrum(cumulative, out_dir / SPECTRUM_FILE, marked=pca_components)
    return results


def format_diagnosis(results: dict) -> str:
    """The diagnosis as a readable two-column table, with what each line means."""
    k, noise = results["pca_components"], results["rfid_noise"]
    rows = [
        ("samples / real images", f"{results['samples']} / {results['images']} ({results['real']})"),
        ("latent transform", f"{results['transform']}: {results['latent_channels']} -> "
                             f"{results['modelled_channels']} channels per position"),
        ("rFID (decode(encode(x)))", f"{results['rfid']:.2f}"),
        ("rFID through the transform", f"{results['rfid_through_transform']:.2f}"),
        (f"rFID through top-{k} PCA", f"{results['rfid_through_pca']:.2f}"),
        *[(f"rFID, noise std {level} in model space", f"{value:.2f}") for level, value in noise.items()],
        ("generation FID", f"{results['fid']:.2f}"),
        ("precision / recall", f"{results['precision']:.3f} / {results['recall']:.3f}"),
        ("latent std, real / generated", f"{results['latent_std_real']:.3f} / {results['latent_std_generated']:.3f}"),
        ("per-position Fréchet distance", f"{results['position_frechet']:.2f} "
                                          f"(real halves: {results['position_frechet_real_halves']:.2f})"),
        (f"off-subspace energy (top-{k}), generated / real", f"{results['off_subspace_energy_ratio']:.2f}x"),
        ("directions for 50/80/90/95/99% variance", " / ".join(str(v) for v in results["spectrum"].values())),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
