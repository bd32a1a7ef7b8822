"""The README's main job on the embedded default: what a new user sees first.

Today it shows the frozen demo encoder at work: the features of Fashion-MNIST test images as a PCA-to-RGB
picture (similar colours mark similar features). The encoder is the one shipped in ``assets/demo_encoder``
(pretrained with `svg-diffusion pretrain-encoder`); without it, a randomly initialized one is used with a
warning. The last line printed is the path of the picture.
"""

from __future__ import annotations

from pathlib import Path

from .features import encode_dataset

ASSETS_DIR = Path(__file__).parent / "assets"
DEMO_ENCODER_DIR = ASSETS_DIR / "demo_encoder"


def demo_encoder() -> str:
    """The shipped demo encoder's folder, or the name of its architecture when no weights are shipped."""
    return str(DEMO_ENCODER_DIR) if (DEMO_ENCODER_DIR / "model.safetensors").is_file() else "demo"


def run_demo(out_dir: str | Path = "outputs/demo") -> Path:
    """Encode 64 Fashion-MNIST test images with the demo encoder; return the path of the PNG written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picture = out_dir / "demo_features.png"
    summary = encode_dataset(
        encoder=demo_encoder(), weights=None, layer=None, data="fashion_mnist", split="test", image_size=32,
        limit=64, batch_size=64, out=out_dir / "demo_features.safetensors", picture=picture,
    )
    print(summary)
    return picture
