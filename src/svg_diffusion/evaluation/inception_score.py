"""Inception Score from the pool features we already compute and the Inception classifier's weight matrix.

IS = exp(E_x KL(p(y|x) || p(y))), averaged over ``splits`` consecutive chunks of the samples (mean and
standard deviation over the chunks; 50k samples and 10 splits is the published protocol).

The class probabilities follow the original IS code (Salimans et al., 2016) and the PyTorch ports that
reproduce it (torch-fidelity's ``logits_unbiased``, StyleGAN3's ``no_output_bias``): p(y|x) =
softmax(W · pool3(x)) with the 1008-way softmax weight matrix W of the same TF Inception (2015-12-05) whose
pool features FID uses, **without the bias**. Our feature network (``inception.py``) is that network's trunk;
its head is not in the offline file, so the weights come from a file the user supplies: a state dict holding
``fc.weight`` of shape [1008, 2048] (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and
torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` both do), as ``.pth``/``.pt`` (read with
``weights_only=True``) or ``.safetensors``. A head of another shape (e.g. torchvision's 1000-class ImageNet
Inception, a different network) is refused: its logits would not belong to these features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import SVGError
from ..utils.pretrained import read_state_file
from .inception import FEATURE_DIM

NUM_CLASSES = 1008  # the TF Inception's softmax: 1000 ImageNet classes + 8 unused
HEAD_KEY = "fc.weight"
DEFAULT_SPLITS = 10


def load_inception_head(path: str | Path) -> torch.Tensor:
    """The [1008, 2048] float64 softmax weights ``fc.weight`` of a state-dict file (see the module docstring)."""
    state = read_state_file(path)
    if HEAD_KEY not in state:
        raise SVGError(f"{path}: no {HEAD_KEY!r} in this weights file: expected the TF Inception's classifier "
                       "(e.g. pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    weight = state[HEAD_KEY]
    if tuple(weight.shape) != (NUM_CLASSES, FEATURE_DIM):
        raise SVGError(f"{path}: {HEAD_KEY} has shape {list(weight.shape)}, expected [{NUM_CLASSES}, {FEATURE_DIM}]: "
                       "the 1008-way head of the TF Inception whose pool features FID uses")
    return weight.double()


def inception_score(features: torch.Tensor | np.ndarray, head: torch.Tensor,
                    splits: int = DEFAULT_SPLITS) -> tuple[float, float]:
    """(mean, std) over ``splits`` chunks of exp(E KL(p(y|x) || p(y))), p(y|x) = softmax(head · features).

    ``features``: Inception pool features [N, 2048] in sample order; computed in float64.
    """
    features = torch.as_tensor(features, dtype=torch.float64)
    if features.ndim != 2 or features.shape[1] != head.shape[1]:
        raise SVGError(f"expected features [N, {head.shape[1]}], got {list(features.shape)}")
    if not 1 <= splits <= len(features):
        raise SVGError(f"the Inception Score needs 1 <= splits <= samples, got {splits} splits of {len(features)}")
    log_probs = torch.log_softmax(features @ head.double().T, dim=1)
    scores = []
    n = len(log_probs)
    for i in range(splits):  # the original code's chunks: [i N / splits, (i + 1) N / splits)
        chunk = log_probs[i * n // splits:(i + 1) * n // splits]
        log_marginal = torch.logsumexp(chunk, dim=0) - np.log(len(chunk))  # log p(y) of this split
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))
