"""The probe table of the demo encoder: pretrained vs the same ViT randomly initialized vs raw pixels.

Fashion-MNIST at 32x32 (the demo size), the fixed protocol of ``svg_diffusion.evaluation.probe`` (features
standardized on train, full-batch L-BFGS logistic regression, k-NN k=20 cosine T=0.07), on the first
``--train`` train images and the first ``--test`` test images. Rows: raw pixels (the flattened image), and
for each ViT the pooled features [CLS, mean of patch tokens] and the flattened 8x8 patch-token map (SVG's
latent). Also writes a PCA-to-RGB picture of the patch features (pretrained and random) of one test image
per class. With ``--docs`` the table replaces the one in docs/pretraining.md.

    python benchmarks/probe_demo_encoder.py --docs
    python benchmarks/probe_demo_encoder.py --encoder runs/x/encoder --train 2000 --test 2000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch

from svg_diffusion.data import FASHION_MNIST_CLASSES, FashionMNIST
from svg_diffusion.encoders import load_encoder, save_encoder
from svg_diffusion.evaluation.probe import PIXELS, format_probe_table, probe_encoders
from svg_diffusion.utils import pca_rgb, save_image_grid
from svg_diffusion.utils.shipped import DEMO_ENCODER_DIR

from reporting import DOCS, IMAGES, replace_block

PAGE = DOCS / "pretraining.md"
PICTURE = IMAGES / "demo_encoder_pca.png"
RANDOM_SEED = 0
START, END = "<!-- probe-table:start -->", "<!-- probe-table:end -->"


def random_demo_encoder(folder: Path) -> Path:
    """The demo architecture with a seeded random initialization, saved so it is probed like any folder."""
    torch.manual_seed(RANDOM_SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no weights: random initialization" is the point here
        return save_encoder(load_encoder("demo"), folder)


def feature_picture(encoders: dict[str, Path], path: Path) -> Path:
    """One test image per class (top row), then each encoder's patch features as PCA-to-RGB maps."""
    test = FashionMNIST("test", image_size=32)
    first = [int((test.labels == c).nonzero()[0, 0]) for c in range(len(FASHION_MNIST_CLASSES))]
    images = torch.stack([test[i][0] for i in first])
    rows, labels = [images], ["image"]
    for label, folder in encoders.items():
        rows.append(pca_rgb(load_encoder(folder)(images), size=32) * 2 - 1)
        labels.append(label)
    return save_image_grid(torch.cat(rows), path, nrow=len(first), row_labels=labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=str(DEMO_ENCODER_DIR), help="the pretrained encoder folder")
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--out", default="outputs/probe_demo_encoder.json")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/pretraining.md and the picture")
    args = parser.parse_args()

    random_folder = random_demo_encoder(Path("outputs/random_demo_encoder"))
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = probe_encoders([PIXELS, str(random_folder), args.encoder], labels=["raw pixels", "random ViT", "pretrained ViT"],
                              num_train=args.train, num_test=args.test, out=args.out, progress=True)
    for warning in caught:  # e.g. a probe that did not converge: the numbers would not be comparable
        print(f"warning: {warning.message}")
    minutes = (time.perf_counter() - started) / 60
    table = format_probe_table(rows)
    setting = (f"Fashion-MNIST 32x32, first {args.train} train / first {args.test} test images; "
               f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
               f"{minutes:.0f} min for the whole table.")
    print(table)
    print(setting)
    json.loads(Path(args.out).read_text())  # written by probe_encoders
    if args.docs:
        replace_block(PAGE, START, END, f"{table}\n\n{setting}")
        feature_picture({"pretrained": Path(args.encoder), "random init": random_folder}, PICTURE)
        print(f"wrote {PAGE} and {PICTURE}")


if __name__ == "__main__":
    main()
