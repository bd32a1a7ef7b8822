"""How well an autoencoder reconstructs a dataset: PSNR, SSIM, LPIPS and rFID (``svg-diffusion eval-autoencoder``).

Every metric is measured on the images as a PNG would hold them: originals and reconstructions are clamped to
[-1, 1] and quantized to the 256 uint8 levels first (the usual protocol of VAE reconstruction tables).

- PSNR (dB) and SSIM: per image (``image_metrics``), then the mean over images; a perfect reconstruction has
  PSNR +inf and SSIM 1.
- LPIPS: our LPIPS-VGG with the real weights (``autoencoder.LPIPS``), the mean over images.
- rFID: the Fréchet distance between the Inception features of the originals and of the reconstructions
  (``evaluation.fid``; the FID Inception weights of docs/evaluation.md). With few images it is biased upwards:
  compare only numbers measured on the same images.

``eval_autoencoder`` can also reconstruct through a diffusion model's latent transform
(:func:`through_transform`): what a model of the transform's coordinates could at best give back.

Under torch.distributed every rank reconstructs its ``shard_indices`` share and the per-image results are
gathered (``all_gather_rows``), so N processes return what one process returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..autoencoder.lpips import LPIPS
from ..autoencoder.vae import load_autoencoder
from ..data import DataConfig, build_dataset
from ..diffusion.latent_transform import LatentTransform
from ..errors import SVGError
from ..training.distributed import all_gather_rows, rank_and_world_size
from ..training.sharding import shard_indices
from ..utils.files import atomic_path
from ..utils.images import save_image_grid
from .fid import FeatureStats, fid_stats, frechet_distance
from .image_metrics import psnr, ssim
from .inception import InceptionFeatures

METRICS_FILE = "reconstruction.json"
GRID_FILE = "reconstruction.png"

Reconstruct = Callable[[torch.Tensor], torch.Tensor]


def quantized(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the 8-bit picture holds them, back in [-1, 1] (float32)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def _reconstructor(autoencoder: nn.Module | Reconstruct) -> Reconstruct:
    """An autoencoder (anything with ``encode`` and ``decode``, used in eval mode) or a function of images."""
    if hasattr(autoencoder, "encode") and hasattr(autoencoder, "decode"):
        return lambda images: autoencoder.decode(autoencoder.encode(images))
    return autoencoder


def through_transform(autoencoder: nn.Module, transform: LatentTransform) -> Reconstruct:
    """decode(T⁻¹(T(encode(x)))): the reconstruction through a latent transform T. A per-channel transform is
    invertible (the autoencoder's own reconstruction); a PCA transform drops what lies outside its subspace."""
    return lambda images: autoencoder.decode(transform.decode(transform.encode(autoencoder.encode(images))))


@torch.no_grad()
def evaluate_reconstruction(
    autoencoder: nn.Module | Reconstruct,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    rfid: bool = True,
    reference: FeatureStats | None = None,
    grid_images: int = 8,
    out_dir: str | Path | None = None,
    progress: bool | None = None,
) -> dict:
    """Reconstruction metrics of ``autoencoder`` on ``dataset`` (items (image in [-1, 1], label)), in order.

    ``autoencoder``: an ``SVGAutoencoder`` (evaluated in eval mode, i.e. with its frozen running alignment
    statistics; its training flag is restored after) or any function images -> reconstructions.
    Returns ``{"images", "psnr", "ssim", "lpips", "rfid"}`` (``rfid`` None when ``rfid=False``).
    ``reference``: the Inception statistics of these very originals, when known (e.g. ``fid_stats`` of a
    cached dataset split): only the reconstructions then go through Inception.
    ``out_dir``: also write ``reconstruction.json`` (the metrics) and ``reconstruction.png`` (the first
    ``grid_images`` originals above their reconstructions), from rank 0.
    """
    if len(dataset) < (2 if rfid else 1):
        raise SVGError(f"reconstruction evaluation needs at least {2 if rfid else 1} images, the dataset has {len(dataset)}")
    if batch_size < 1:
        raise SVGError(f"batch size must be positive, got {batch_size}")
    if reference is not None and reference.count not in (-1, len(dataset)):
        raise SVGError(f"the reference statistics are of {reference.count} images, the dataset has {len(dataset)}")
    device = torch.device(device)
    was_training = isinstance(autoencoder, nn.Module) and autoencoder.training
    if isinstance(autoencoder, nn.Module):
        autoencoder.eval()
    reconstruct = _reconstructor(autoencoder)
    lpips = LPIPS().to(device)
    inception = InceptionFeatures().to(device) if rfid else None

    rank, world_size = rank_and_world_size()
    share = Subset(dataset, shard_indices(len(dataset), rank, world_size))
    columns: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": [], "lpips": [], "real": [], "fake": []}
    grid: list[torch.Tensor] = []
    loader = DataLoader(share, batch_size=batch_size, shuffle=False, num_workers=0)
    quiet = True if rank > 0 else None if progress is None else not progress  # None: a bar on terminals only
    for images, _ in tqdm(loader, desc="reconstruction", disable=quiet):
        originals = quantized(images.to(device))
        recon = quantized(reconstruct(originals))
        columns["psnr"].append(psnr(originals, recon))
        columns["ssim"].append(ssim(originals, recon))
        columns["lpips"].append(lpips(originals, recon).double())
        if inception is not None:
            features = inception(recon if reference is not None else torch.cat([recon, originals])).double()
            columns["fake"].append(features[: len(images)])
            if reference is None:
                columns["real"].append(features[len(images) :])
        if sum(len(pair) for pair in grid) < grid_images:
            grid.append(torch.stack([originals, recon], dim=1)[: grid_images - sum(len(pair) for pair in grid)].cpu())
    if was_training:
        autoencoder.train()

    gathered = {name: all_gather_rows(torch.cat(values)).cpu() for name, values in columns.items() if values}
    metrics = {
        "images": len(dataset),
        "psnr": gathered["psnr"].mean().item(),
        "ssim": gathered["ssim"].mean().item(),
        "lpips": gathered["lpips"].mean().item(),
        "rfid": None,
    }
    if rfid:
        real = reference if reference is not None else FeatureStats.from_features(gathered["real"])
        # A distance: round-off can leave an exact reconstruction a hair below zero.
        metrics["rfid"] = max(0.0, frechet_distance(real, FeatureStats.from_features(gathered["fake"])))
    if out_dir is not None and rank == 0:
        out_dir = Path(out_dir)
        with atomic_path(out_dir / METRICS_FILE) as tmp:  # +inf PSNR is written as Infinity, which json reads back
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        pairs = torch.cat(grid)
        save_image_grid(pairs.transpose(0, 1).flatten(0, 1), out_dir / GRID_FILE, nrow=len(pairs),
                        row_labels=["original", "reconstruction"])
    return metrics


def eval_autoencoder(
    autoencoder_dir: str | Path,
    data: str = "fashion_mnist",
    split: str = "test",
    limit: int | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    rfid: bool = True,
    progress: bool | None = None,
    latent_transform: LatentTransform | None = None,
) -> dict:
    """``evaluate_reconstruction`` of a saved autoencoder folder on ``split`` of ``data`` (the eval-autoencoder command).

    ``data``: "fashion_mnist" or an image folder (any tree of images, or one with train/ and test/ or val/),
    read at the autoencoder's image size. For Fashion-MNIST the originals' Inception statistics come from the
    feature cache of ``evaluation.fid`` (computed once per split, size and count). ``latent_transform``:
    reconstruct through it (:func:`through_transform`).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    autoencoder = load_autoencoder(autoencoder_dir).to(device)  # SVG or the VAE baseline
    size = autoencoder.config.image_size
    if data == "fashion_mnist":
        config = DataConfig(source="fashion_mnist", image_size=size, limit=limit)
    else:
        config = DataConfig(source="image_folder", root=data, image_size=size, limit=limit, labelled=False)
    dataset = build_dataset(config, split, progress=progress is not False)
    reference = None
    if rfid and data == "fashion_mnist":
        reference = fid_stats(f"fashion_mnist:{split}", image_size=size, limit=len(dataset), device=device,
                              progress=progress)
    reconstruct = autoencoder if latent_transform is None else through_transform(autoencoder, latent_transform)
    return evaluate_reconstruction(reconstruct, dataset, batch_size=batch_size, device=device, rfid=rfid,
                                   reference=reference, out_dir=out_dir, progress=progress)


def format_metrics_table(rows: dict[str, dict]) -> str:
    """A markdown table of reconstruction metrics, one row per named result."""
    lines = ["| model | images | PSNR (dB) ↑ | SSIM ↑ | LPIPS ↓ | rFID ↓ |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows.items():
        rfid = "–" if m.get("rfid") is None else f"{m['rfid']:.2f}"
        value = "inf" if math.isinf(m["psnr"]) else f"{m['psnr']:.2f}"
        lines.append(f"| {name} | {m['images']} | {value} | {m['ssim']:.4f} | {m['lpips']:.4f} | {rfid} |")
    return "\n".join(lines)
