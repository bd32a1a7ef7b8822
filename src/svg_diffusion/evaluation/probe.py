"""Linear probe and k-NN classification of frozen features, with ONE fixed protocol.

Numbers are only comparable across feature sets (DINO tokens, SVG latents, pixels, ...) if nothing is tuned
per feature set, so every setting below is a constant:

- standardization: each feature dimension is centred and scaled with the mean and standard deviation of
  the *train* split (dimensions constant on train keep scale 1), and the same map is applied to test;
- linear probe: multinomial logistic regression, mean cross-entropy + (L2 / 2) * |W|^2 with L2 = 1e-4 on the
  weights (not the bias), zero initialization, full-batch L-BFGS in float32 (history 20, strong-Wolfe line
  search) until the gradient's largest entry is below 1e-6 or 1000 iterations (a warning says when the
  limit is hit). The objective is strictly convex, so the solution does not depend on anything else;
- k-NN (DINO's weighted k-NN): cosine similarity of the standardized features, the k = 20 most similar train
  points vote for their class with weight exp(similarity / 0.07). Unlike DINO we standardize first, so
  features that are not centred (pixels, VAE latents) are compared on an equal footing.

Both return top-1 accuracy as a fraction in [0, 1]. Cost on 2 CPU cores for 10k train x 2k test points of
8192 dims: about a minute for the probe, 10 s for k-NN (docs/evaluation.md has measured timings).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data import DataConfig, build_dataset
from ..encoders import load_encoder
from ..errors import SVGError
from ..utils.files import atomic_path
from .features import FeatureFn, Pooling, encoder_tokens, extract_features, extract_pooled_features

PROBE_L2 = 1e-4
PROBE_MAX_ITER = 1000
PROBE_GRAD_TOLERANCE = 1e-6
KNN_K = 20
KNN_TEMPERATURE = 0.07
PROTOCOL = {"standardize": "train mean/std", "linear": "multinomial logistic regression, full-batch L-BFGS",
            "l2": PROBE_L2, "max_iter": PROBE_MAX_ITER, "grad_tolerance": PROBE_GRAD_TOLERANCE,
            "knn_k": KNN_K, "knn_temperature": KNN_TEMPERATURE, "knn_similarity": "cosine"}
PIXELS = "pixels"  # the raw-pixel baseline of `probe_encoders`
MODE_NAMES = {"pooled": "CLS + mean patch", "patch": "patch map", "pixels": "flattened image"}


def _check_split(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise SVGError(f"{name}: expected features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and scale both splits with the train split's per-dimension mean and std (float32 results)."""
    train64 = train.double()
    mean, std = train64.mean(0), train64.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant dimension carries no information
    return ((train64 - mean) / std).float(), ((test.double() - mean) / std).float()


def _prepare(train_feats, train_labels, test_feats, test_labels):
    _check_split(train_feats, train_labels, "train")
    _check_split(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise SVGError(f"train and test features differ in size: {train_feats.shape[1]} vs {test_feats.shape[1]}")
    train_x, test_x = standardize(train_feats, test_feats)
    return train_x, train_labels.long(), test_x, test_labels.long(), int(train_labels.max()) + 1


def linear_probe(
    train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, test_labels: torch.Tensor
) -> float:
    """Top-1 test accuracy of a logistic-regression probe fitted on the train features (fixed protocol)."""
    train_x, train_y, test_x, test_y, num_classes = _prepare(train_feats, train_labels, test_feats, test_labels)
    weight = torch.zeros(train_x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=PROBE_MAX_ITER, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=PROBE_GRAD_TOLERANCE, tolerance_change=0.0,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + 0.5 * PROBE_L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    if optimizer.state[weight]["n_iter"] >= PROBE_MAX_ITER:  # L-BFGS keeps its state under the first parameter
        warnings.warn(f"linear probe: L-BFGS stopped at {PROBE_MAX_ITER} iterations before converging")
    with torch.no_grad():
        predictions = (test_x @ weight + bias).argmax(1)
    return (predictions == test_y).float().mean().item()


@torch.no_grad()
def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    block: int = 1024,
) -> float:
    """Top-1 test accuracy of temperature-weighted cosine k-NN voting over the train set (fixed protocol)."""
    train_x, train_y, test_x, test_y, num_classes = _prepare(train_feats, train_labels, test_feats, test_labels)
    if k > len(train_x):
        raise SVGError(f"k-NN with k={k} needs at least {k} train points, got {len(train_x)}")
    train_x, test_x = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    correct = 0
    for start in range(0, len(test_x), block):
        similarity, neighbours = (test_x[start:start + block] @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(len(similarity), num_classes)
        votes.scatter_add_(1, train_y[neighbours], (similarity / temperature).exp())
        correct += (votes.argmax(1) == test_y[start:start + block]).sum().item()
    return correct / len(test_x)


def evaluate_features(
    train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, test_labels: torch.Tensor
) -> dict[str, float]:
    """Both evaluations of extracted features: ``{"linear_top1", "knn_top1", "dim", "num_train", "num_test"}``."""
    if (train_labels < 0).any():
        raise SVGError("the probe needs a labelled train set (labels >= 0)")
    return {
        "linear_top1": linear_probe(train_feats, train_labels, test_feats, test_labels),
        "knn_top1": knn_accuracy(train_feats, train_labels, test_feats, test_labels),
        "dim": train_feats.shape[1],
        "num_train": len(train_feats),
        "num_test": len(test_feats),
    }


def probe_features(
    feature_fn: FeatureFn,
    train_set: Dataset,
    test_set: Dataset,
    *,
    mode: Pooling = "pooled",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> dict[str, float]:
    """Extract ``feature_fn``'s features of two labelled datasets and run both evaluations.

    ``mode`` is "pooled" (mean over positions, with CLS prepended when the output has one) or "patch" (the
    flattened map). Returns ``{"linear_top1", "knn_top1", "dim", "num_train", "num_test"}``.
    """
    common = dict(mode=mode, batch_size=batch_size, device=device, progress=progress)
    train_feats, train_labels = extract_features(feature_fn, train_set, desc="train features", **common)
    test_feats, test_labels = extract_features(feature_fn, test_set, desc="test features", **common)
    return evaluate_features(train_feats, train_labels, test_feats, test_labels)


def probe_encoders(
    encoders: list[str],
    *,
    weights: str | None = None,
    layer: int | None = None,
    data: str = "fashion_mnist",
    image_size: int = 32,
    num_train: int | None = 10000,
    num_test: int | None = 10000,
    modes: tuple[Pooling, ...] = ("pooled", "patch"),
    batch_size: int = 256,
    labels: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Probe frozen encoders (and raw pixels) on the same labelled splits with the fixed protocol.

    ``encoders``: names (``svg-diffusion encoders``; without weights: a random initialization), encoder
    folders, or ``"pixels"`` (the flattened image: one "patch"-mode row, as pooling pixels means nothing).
    ``weights``/``layer``: as ``load_encoder``; ``weights`` only with a single encoder. ``data``:
    "fashion_mnist" or a labelled image folder; train rows are the first ``num_train`` images of the train
    split, test rows the first ``num_test`` of the test split (None: all). ``modes``: "pooled" is
    [CLS, mean of patch tokens], "patch" the flattened patch-token map. ``labels``: row names (default:
    the encoder strings). Writes ``out`` (JSON) when given; returns one dict per row.
    """
    if weights is not None and len(encoders) != 1:
        raise SVGError("--weights needs exactly one --encoder")
    if labels is not None and len(labels) != len(encoders):
        raise SVGError(f"{len(labels)} labels for {len(encoders)} encoders")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if data == "fashion_mnist":
        configs = {split: DataConfig(source="fashion_mnist", image_size=image_size, limit=limit)
                   for split, limit in (("train", num_train), ("test", num_test))}
    else:
        configs = {split: DataConfig(source="image_folder", root=data, image_size=image_size, limit=limit)
                   for split, limit in (("train", num_train), ("test", num_test))}
    splits = {split: build_dataset(cfg, split, progress=bool(progress)) for split, cfg in configs.items()}

    rows = []
    for encoder, label in zip(encoders, labels or encoders):
        if encoder == PIXELS:
            feature_fn, row_modes = (lambda images: images), ("patch",)
        else:
            frozen = load_encoder(encoder, weights=weights, layer=layer).to(device)
            frozen.vit.check_input_size(image_size, image_size)
            feature_fn, row_modes = encoder_tokens(frozen), modes
        extracted = {
            split: extract_pooled_features(feature_fn, dataset, modes=row_modes, batch_size=batch_size, device=device,
                                           desc=f"{label} {split}", progress=progress)
            for split, dataset in splits.items()
        }
        (train_feats, train_labels), (test_feats, test_labels) = extracted["train"], extracted["test"]
        for mode in row_modes:
            result = evaluate_features(train_feats[mode], train_labels, test_feats[mode], test_labels)
            rows.append({"features": label, "mode": "pixels" if encoder == PIXELS else mode, **result})
    if out is not None:
        report = {"protocol": PROTOCOL, "data": data, "image_size": image_size, "rows": rows}
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    return rows


def format_probe_table(rows: list[dict]) -> str:
    """A Markdown table of ``probe_encoders`` rows (accuracies in percent)."""
    lines = ["| features | pooling | dim | linear probe | k-NN (k=20) |", "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['features']} | {MODE_NAMES[row['mode']]} | {row['dim']} | "
                     f"{100 * row['linear_top1']:.1f}% | {100 * row['knn_top1']:.1f}% |")
    return "\n".join(lines)
