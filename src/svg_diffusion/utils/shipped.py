"""The weights shipped inside the package, by name, so they work from any folder and in an installed wheel.

- ``demo-pretrained``: the demo encoder, the ``demo`` ViT architecture pretrained by ``pretrain-encoder``
  on Fashion-MNIST (``svg-diffusion encoders`` lists it; the bare name ``demo`` is the architecture with
  random weights);
- ``demo-pipeline``: the demo pipeline trained on that encoder (docs/demo.md).

Every place that takes an encoder (``load_encoder``, ``--encoder``, ``model.encoder`` in a config) accepts the
encoder names; every place that takes a pipeline or an autoencoder folder (``SVGPipeline.from_pretrained``,
``load_autoencoder``, ``--pipeline``, ``init_from``, ``autoencoder`` in a config) accepts the pipeline names.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SVGError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEMO_ENCODER_DIR = ASSETS_DIR / "demo_encoder"
DEMO_PIPELINE_DIR = ASSETS_DIR / "demo_pipeline"
DEMO_ENCODER = "demo-pretrained"
DEMO_PIPELINE = "demo-pipeline"
SHIPPED_ENCODERS = {DEMO_ENCODER: DEMO_ENCODER_DIR}
SHIPPED_PIPELINES = {DEMO_PIPELINE: DEMO_PIPELINE_DIR}


def shipped_encoder(name_or_path: str | Path) -> str | Path:
    """The folder of a shipped encoder's name; anything else unchanged."""
    return _shipped(name_or_path, SHIPPED_ENCODERS, "encoder")


def shipped_pipeline(name_or_path: str | Path) -> str | Path:
    """The folder of a shipped pipeline's name; anything else unchanged."""
    return _shipped(name_or_path, SHIPPED_PIPELINES, "pipeline")


def _shipped(name_or_path: str | Path, shipped: dict[str, Path], what: str) -> str | Path:
    folder = shipped.get(str(name_or_path))
    if folder is None:
        return name_or_path
    if not folder.is_dir():
        raise SVGError(f"the shipped {what} {name_or_path!r} is missing from this installation ({folder})")
    return folder
