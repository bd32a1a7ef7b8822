"""Batched feature extraction over a dataset, and the fixed ways of turning a model's output into one vector.

A *feature function* maps a batch of images [B, 3, H, W] in [-1, 1] to one of:

- [B, D] vectors (e.g. ``InceptionFeatures``), used as they are;
- a map [B, C, h, w] (e.g. a ``FrozenEncoder`` or an SVG latent) or tokens [B, N, C];
- a dict with ``x_norm_clstoken`` [B, C] and ``x_norm_patchtokens`` [B, N, C] (``VisionTransformer.forward_features``).

Two fixed poolings make the outputs of different models comparable:

- ``"pooled"``: the mean over positions (of the map or the tokens); with a class token, the concatenation
  [CLS, mean of patch tokens] (the DINO linear-evaluation recipe), so 2C dims;
- ``"patch"``: the whole map or token sequence flattened (C*h*w dims; the CLS token is not used).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..encoders import FrozenEncoder
from ..errors import SVGError

FeatureFn = Callable[[torch.Tensor], "torch.Tensor | dict[str, torch.Tensor]"]
Pooling = Literal["pooled", "patch"]


def pool_features(output: torch.Tensor | dict, mode: Pooling = "pooled") -> torch.Tensor:
    """A model's output (see the module docstring) -> feature vectors [B, D]."""
    if mode not in ("pooled", "patch"):
        raise SVGError(f"unknown pooling {mode!r}: use 'pooled' or 'patch'")
    if isinstance(output, dict):
        if "x_norm_patchtokens" not in output:
            raise SVGError(f"feature dict needs 'x_norm_patchtokens', has {sorted(output)}")
        patches = output["x_norm_patchtokens"]
        if mode == "patch":
            return patches.flatten(1)
        cls = output.get("x_norm_clstoken")
        pooled = patches.mean(1)
        return pooled if cls is None else torch.cat([cls, pooled], dim=1)
    if output.ndim == 2:
        return output
    if output.ndim == 4:  # [B, C, h, w]
        return output.flatten(1) if mode == "patch" else output.mean((2, 3))
    if output.ndim == 3:  # [B, N, C]
        return output.flatten(1) if mode == "patch" else output.mean(1)
    raise SVGError(f"cannot pool features of shape {tuple(output.shape)}: expected [B,D], [B,N,C] or [B,C,h,w]")


@torch.no_grad()
def extract_features(
    feature_fn: FeatureFn,
    dataset: Dataset,
    *,
    mode: Pooling = "pooled",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    desc: str = "features",
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``feature_fn`` over ``dataset`` in order; return (features [N, D] float32 on CPU, labels [N] long).

    The dataset yields (image in [-1, 1], label). The order is the dataset's, with no randomness, so results
    depend only on the data and the model. ``progress=None`` shows a bar only on a terminal.
    """
    features, labels = extract_pooled_features(feature_fn, dataset, modes=(mode,), batch_size=batch_size,
                                               device=device, desc=desc, progress=progress)
    return features[mode], labels


@torch.no_grad()
def extract_pooled_features(
    feature_fn: FeatureFn,
    dataset: Dataset,
    *,
    modes: tuple[Pooling, ...] = ("pooled", "patch"),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    desc: str = "features",
    progress: bool | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``extract_features`` for several poolings from ONE pass over the data: ({mode: [N, D_mode]}, labels [N])."""
    if len(dataset) == 0:
        raise SVGError(f"{desc}: the dataset is empty")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    features: dict[str, list[torch.Tensor]] = {mode: [] for mode in modes}
    labels = []
    for images, batch_labels in tqdm(loader, desc=desc, disable=None if progress is None else not progress):
        output = feature_fn(images.to(device))
        for mode in modes:
            features[mode].append(pool_features(output, mode).float().cpu())
        labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
    return {mode: torch.cat(chunks) for mode, chunks in features.items()}, torch.cat(labels)


def encoder_tokens(encoder: FrozenEncoder) -> FeatureFn:
    """A feature function giving a frozen encoder's class AND patch tokens (the encoder itself gives only the
    patch map), so ``"pooled"`` is DINO's [CLS, mean of patch tokens]."""

    def tokens(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return encoder.vit.forward_features(images * encoder.scale + encoder.shift, layer=encoder.layer)

    return tokens
