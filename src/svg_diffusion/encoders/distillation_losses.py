"""The self-distillation objective: DINO's class-token loss, iBOT's masked-patch loss and the KoLeo regularizer.

Each is a mean over images of this process's micro-batch (the engine's accumulation rule); KoLeo searches
nearest neighbours among the vectors of every process, so it is the loss of the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..training.distributed import all_gather_rows_with_grad, rank_and_world_size


def dino_loss(student_logits: Tensor, teacher_probs: Tensor, student_temp: float) -> Tensor:
    """Cross-entropy from each teacher global view to every student view but the same one, averaged.

    student_logits [V*B, K] (view-major, globals first), teacher_probs [2*B, K]; mean over images.
    """
    batch = teacher_probs.shape[0] // 2
    student = F.log_softmax(student_logits.float() / student_temp, dim=-1).split(batch)
    teacher = teacher_probs.split(batch)
    terms = [-(t * s).sum(-1).mean() for i, t in enumerate(teacher) for j, s in enumerate(student) if i != j]
    return torch.stack(terms).mean()


def ibot_loss(student_logits: Tensor, teacher_probs: Tensor, masks: Tensor, student_temp: float) -> Tensor:
    """Cross-entropy on masked patches: averaged within each image, then over ALL global-crop images.

    Images without masked patches count as zero (iBOT/DINOv2's normalization): a per-image mean over the
    micro-batch, as the engine's accumulation rule needs.
    """
    per_patch = -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)
    weights = (1.0 / masks.sum(1).clamp(min=1)).unsqueeze(1).expand_as(masks)[masks]
    return (per_patch * weights).sum() / masks.shape[0]


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo (DINOv2): -mean log distance of each L2-normalized vector to its nearest neighbour.

    Neighbours are searched among the vectors of every process (gathered with gradients), so the loss is
    that of the global batch.
    """
    x = F.normalize(features.float(), dim=-1)
    everyone = all_gather_rows_with_grad(x)
    rank, _ = rank_and_world_size()
    own = torch.arange(len(x), device=x.device) + rank * len(x)
    with torch.no_grad():
        similarity = x @ everyone.T
        similarity[torch.arange(len(x)), own] = -2.0  # never your own neighbour
        nearest = similarity.argmax(dim=1)
    distance = (x - everyone[nearest]).norm(dim=1)
    return -torch.log(distance + eps).mean()
