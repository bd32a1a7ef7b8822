"""Frozen-encoder features of a whole dataset, written to one safetensors file (the `encode` command).

The file holds ``features`` float32 [N, C, h, w] (patch tokens after the final norm, as feature maps) and
``labels`` int64 [N], with metadata naming the encoder, layer, data and image size. Optionally a PNG shows
the first images above a PCA-to-RGB picture of their features (similar colours = similar features).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data import DataConfig, build_dataset
from .encoders import load_encoder
from .errors import SVGError
from .utils.files import atomic_path
from .utils.images import pca_rgb, save_image_grid

PICTURE_COLUMNS = 8


def encode_dataset(
    encoder: str,
    weights: str | None,
    layer: int | None,
    data: str,
    split: str,
    image_size: int,
    limit: int | None,
    batch_size: int,
    out: str | Path,
    picture: str | Path | None = None,
    labelled: bool = True,
    workers: int = 0,
) -> str:
    """Encode ``split`` of ``data`` ('fashion_mnist' or an image folder) with the frozen ``encoder`` into ``out``.

    encoder/weights/layer: as `load_encoder`. limit: only the first N images. labelled: image folders only,
    class subfolders (True) or one flat folder (labels -1). picture: also write a PNG of the first images
    and their features' PCA. workers: data-loading processes. Runs on the GPU when there is one.
    Returns a one-line summary.
    """
    if batch_size < 1 or workers < 0:
        raise SVGError(f"batch size must be positive and workers >= 0, got {batch_size} and {workers}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frozen = load_encoder(encoder, weights=weights, layer=layer).to(device)
    frozen.vit.check_input_size(image_size, image_size)
    if data == "fashion_mnist":
        data_cfg = DataConfig(source="fashion_mnist", image_size=image_size, limit=limit)
    else:
        data_cfg = DataConfig(source="image_folder", root=data, image_size=image_size, limit=limit, labelled=labelled)
    dataset = build_dataset(data_cfg, split)

    features = labels = None
    done = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    for images, batch_labels in tqdm(loader, desc=f"encoding {split}", unit="batch", disable=None):
        batch_features = frozen(images.to(device)).cpu()
        if features is None:  # allocate once: N x C x h x w can be large, concatenating would double it
            features = torch.empty((len(dataset), *batch_features.shape[1:]), dtype=torch.float32)
            labels = torch.empty(len(dataset), dtype=torch.int64)
        features[done : done + len(images)] = batch_features
        labels[done : done + len(images)] = batch_labels
        done += len(images)

    metadata = {"encoder": str(encoder), "weights": str(weights), "layer": str(layer), "data": str(data),
                "split": split, "image_size": str(image_size)}
    with atomic_path(out) as tmp:
        save_file({"features": features, "labels": labels}, str(tmp), metadata=metadata)
    if picture is not None:
        save_feature_picture(dataset, features, picture)
    return f"wrote {out}: features {list(features.shape)}, labels {list(labels.shape)}"


def save_feature_picture(dataset: Dataset, features: torch.Tensor, path: str | Path) -> Path:
    """A PNG with the first images (top row) above their features' PCA-to-RGB maps (bottom row)."""
    count = min(PICTURE_COLUMNS, len(features))
    images = torch.stack([dataset[i][0] for i in range(count)])
    maps = pca_rgb(features[:count], size=tuple(images.shape[-2:])) * 2 - 1
    return save_image_grid(torch.cat([images, maps]), path, nrow=count, row_labels=["image", "features"])
