"""svg-diffusion: latent diffusion on the features of a frozen self-supervised encoder (SVG).

Imports flow one way through the package (tests/test_import_layers.py checks it):
data -> encoders -> autoencoder -> diffusion -> pipeline -> sample_writer -> evaluation -> demo, trainers,
official, encode_dataset -> export (a training run's checkpoint as a model folder) -> cli, all on a foundation
that every layer may use: errors, config, utils and the training engine (training: distributed processes, data
order, checkpoints, the loop).

The public API is importable from here; the modules behind it (and torch) load on first use, so
``import svg_diffusion`` stays fast:

    from svg_diffusion import SVGPipeline
    pipe = SVGPipeline.from_pretrained("converted/svg-xl")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import SVGError

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "SVGPipeline": ".pipeline",
    "SVGAutoencoder": ".autoencoder",
    "load_encoder": ".encoders",
    "DiT": ".diffusion",
    "convert_official": ".official",
}

__all__ = ["DiT", "SVGAutoencoder", "SVGError", "SVGPipeline", "__version__", "convert_official", "load_encoder"]

if TYPE_CHECKING:
    from .autoencoder import SVGAutoencoder
    from .diffusion import DiT
    from .encoders import load_encoder
    from .official import convert_official
    from .pipeline import SVGPipeline


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
