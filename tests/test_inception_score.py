"""The Inception Score: the formula against a float64 NumPy transcription of the original code, its bounds on
constructed predictions, and the classifier-head files it reads (real formats, random weights)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from svg_diffusion.errors import SVGError
from svg_diffusion.evaluation import FEATURE_DIM, inception_score, load_inception_head
from svg_diffusion.evaluation.inception_score import NUM_CLASSES


def reference_inception_score(features: np.ndarray, head: np.ndarray, splits: int) -> tuple[float, float]:
    """The original IS code's loop, in float64 NumPy: softmax predictions, per split KL to the split's marginal."""
    logits = features @ head.T
    preds = np.exp(logits - logits.max(axis=1, keepdims=True))
    preds /= preds.sum(axis=1, keepdims=True)
    scores = []
    for i in range(splits):
        part = preds[i * len(preds) // splits:(i + 1) * len(preds) // splits]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores)), float(np.std(scores))


def random_head(seed: int = 0) -> torch.Tensor:
    return torch.randn(NUM_CLASSES, FEATURE_DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.05


@pytest.mark.parametrize("num, splits", [(103, 10), (64, 1), (50, 7)])
def test_inception_score_matches_the_original_formula(num, splits):
    features = torch.rand(num, FEATURE_DIM, generator=torch.Generator().manual_seed(num), dtype=torch.float64) * 2
    head = random_head()
    mean, std = inception_score(features.float(), head, splits)
    expected = reference_inception_score(features.float().double().numpy(), head.numpy(), splits)
    assert mean == pytest.approx(expected[0], rel=1e-10) and std == pytest.approx(expected[1], rel=1e-8, abs=1e-12)
    assert 1.0 < mean < NUM_CLASSES  # a random head spreads its predictions: neither extreme


def test_inception_score_of_confident_predictions_counts_the_classes():
    head = torch.zeros(NUM_CLASSES, FEATURE_DIM, dtype=torch.float64)
    head[:, :NUM_CLASSES] = 60 * torch.eye(NUM_CLASSES, dtype=torch.float64)  # feature j votes for class j
    ten_classes = torch.eye(FEATURE_DIM)[torch.arange(100) % 10]  # every split of 10 holds the ten classes once
    mean, std = inception_score(ten_classes, head, splits=10)
    assert mean == pytest.approx(10, rel=1e-6) and std < 1e-9
    one_class = torch.eye(FEATURE_DIM)[torch.zeros(100, dtype=torch.long)]
    assert inception_score(one_class, head, splits=10)[0] == pytest.approx(1, abs=1e-9)
    with pytest.raises(SVGError, match="1 <= splits <= samples"):
        inception_score(ten_classes[:5], head, splits=10)


def test_head_files_in_the_pytorch_formats(tmp_path):
    """A pytorch-fid-style state dict (trunk keys, fc.weight [1008, 2048] and fc.bias) as .pth and .safetensors."""
    weight = random_head().float()
    state = {"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3), "fc.weight": weight, "fc.bias": torch.randn(NUM_CLASSES)}
    torch.save(state, tmp_path / "pt_inception.pth")
    save_file(state, tmp_path / "head.safetensors")
    for name in ("pt_inception.pth", "head.safetensors"):
        head = load_inception_head(tmp_path / name)
        assert head.dtype == torch.float64 and torch.equal(head, weight.double())  # the bias is not used

    torch.save({"fc.weight": torch.randn(1000, FEATURE_DIM)}, tmp_path / "torchvision_head.pth")
    with pytest.raises(SVGError, match=r"shape \[1000, 2048\], expected \[1008, 2048\]"):
        load_inception_head(tmp_path / "torchvision_head.pth")
    torch.save({"classifier.weight": weight}, tmp_path / "other.pth")
    with pytest.raises(SVGError, match="no 'fc.weight'"):
        load_inception_head(tmp_path / "other.pth")
    torch.save({"fc.weight": weight, "note": object()}, tmp_path / "pickle.pth")  # not loadable with weights_only
    with pytest.raises(SVGError, match=r"refused: loading this file needs code execution \(it holds a pickled 'object'"):
        load_inception_head(tmp_path / "pickle.pth")
