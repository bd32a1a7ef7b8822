"""Watching self-distillation for collapse, from the entropies of the teacher's output distributions.

Both collapses DINO can fall into make the batch-averaged distribution as sharp as each image's: one
prototype for every image (both entropies near 0) or uniform outputs (both near log K). Their gap, as
fractions of log K, is how much the teacher's output depends on the image.
"""

from __future__ import annotations

from torch import Tensor


def entropy(probs: Tensor) -> Tensor:
    """The entropy (nats) of each distribution in ``probs`` [..., K]."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def collapse_warning(image_entropy: float, batch_entropy: float, threshold: float) -> str | None:
    """What looks collapsed, or None: ``image_entropy`` is the teacher's mean per-image entropy and
    ``batch_entropy`` that of its batch-averaged output, both as fractions of log K."""
    if batch_entropy - image_entropy >= threshold:
        return None
    kind = "uniform outputs" if image_entropy > 0.5 else "one prototype for every image"
    return (f"the teacher may have collapsed ({kind}): its batch entropy {batch_entropy:.3f} minus its "
            f"per-image entropy {image_entropy:.3f} (fractions of log K) is below collapse_threshold {threshold}")
