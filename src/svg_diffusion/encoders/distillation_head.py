"""The networks of self-distillation: a ViT backbone + DINO's projection head (student and teacher alike)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training.distributed import all_reduce_sum_with_grad
from .configs import ViTConfig
from .vit import VisionTransformer


class GlobalBatchNorm(nn.Module):
    """BatchNorm over rows [M, D] of ALL processes (statistics all-reduced with gradients), batch stats only.

    Ranks may hold different numbers of rows (masked patches), so sums and counts are reduced, not means:
    one process computes what N processes compute together. The variance is the mean squared deviation
    from the global mean (two reductions): E[x^2] - E[x]^2 would cancel catastrophically at initialization,
    when all images give nearly the same class token. No running statistics: the head that uses it is
    thrown away after pretraining.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        sums = all_reduce_sum_with_grad(torch.cat([x32.sum(0), x32.new_full((1,), x.shape[0])]))
        count = sums[-1].clamp(min=1)
        centred = x32 - sums[:-1] / count
        variance = all_reduce_sum_with_grad(centred.pow(2).sum(0)) / count
        return (centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias).to(x.dtype)


class ProjectionHead(nn.Module):
    """DINO's head: MLP to a bottleneck, L2 normalization, cosine logits against K learned prototypes.

    The prototypes are normalized in the forward pass (DINO's weight-normalized last layer with its norm
    fixed to 1), and the logits are computed in float32: divided by a teacher temperature of 0.04, bf16
    rounding would be amplified 25 times.
    """

    def __init__(self, in_dim: int, prototypes: int, hidden_dim: int, bottleneck_dim: int, layers: int,
                 batchnorm: bool):
        super().__init__()
        widths = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mlp: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            hidden = i < layers - 1
            mlp.append(nn.Linear(width_in, width_out, bias=not (hidden and batchnorm)))  # BatchNorm removes a bias
            if hidden:
                mlp += [GlobalBatchNorm(width_out), nn.GELU()] if batchnorm else [nn.GELU()]
        self.mlp = nn.Sequential(*mlp)
        self.prototypes = nn.Parameter(torch.empty(prototypes, bottleneck_dim))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(z.float(), dim=-1) @ F.normalize(self.prototypes.float(), dim=-1).T


class DistillationModel(nn.Module):
    """Backbone + head; the student and the teacher are two of these.

    ``forward(global_crops, masks, local_crops=None, mask_input=True)`` returns ``cls_logits`` for the
    global then local crops, ``patch_logits`` for the patches where ``masks`` is True (the student sees
    those patches replaced by the mask token when ``mask_input``; the teacher sees the image), and the
    global crops' ``cls_tokens`` (for KoLeo). The head's arguments are those of :class:`ProjectionHead`.
    """

    def __init__(self, vit_config: ViTConfig, prototypes: int, hidden_dim: int, bottleneck_dim: int, layers: int,
                 batchnorm: bool):
        super().__init__()
        self.backbone = VisionTransformer(vit_config)  # before the head: the initialization draws in this order
        self.head = ProjectionHead(vit_config.embed_dim, prototypes, hidden_dim, bottleneck_dim, layers, batchnorm)

    def forward(self, global_crops: Tensor, masks: Tensor, local_crops: Tensor | None = None,
                mask_input: bool = True) -> dict[str, Tensor]:
        out = self.backbone(global_crops, masks=masks if mask_input else None)
        cls = out["x_norm_clstoken"]
        if local_crops is not None:
            cls = torch.cat([cls, self.backbone(local_crops)["x_norm_clstoken"]])
        return {
            "cls_logits": self.head(cls),
            "patch_logits": self.head(out["x_norm_patchtokens"][masks]),
            "cls_tokens": out["x_norm_clstoken"],
        }
