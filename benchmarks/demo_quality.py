"""Sample quality of the shipped demo pipeline: FID and precision/recall against the Fashion-MNIST test set.

    python benchmarks/demo_quality.py --docs                          # 2000 samples per row, 5/10/25 Euler steps
    python benchmarks/demo_quality.py --num 500 --steps 10            # a quick look, printed only
    python benchmarks/demo_quality.py --docs --fp32 runs/demo/diffusion/pipeline   # + float16-storage parity

Each row samples ``--num`` images with balanced classes (sample i: class i mod 10, noise seeded by (seed, i),
so every row starts from the same noise), at the pipeline's guidance, and compares their Inception features
with those of the first ``--num`` test images (cached by the evaluation code) by FID and k=3
precision/recall. A reference row compares as many *real* training images with the same test images: the
FID a perfect model would get at this sample size (FID is biased upwards at small N). ``--fp32`` also
samples from the float32 pipeline the shipped one was exported from and reports the pixel differences.

Rows are saved to ``--out`` (JSON) as they finish; a rerun reuses the rows already there for the same
settings (``--fresh`` recomputes). ``--docs`` writes the table into docs/demo.md and README.md between
``<!-- demo-quality:start -->`` and ``<!-- demo-quality:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from svg_diffusion.demo import demo_pipeline
from svg_diffusion.evaluation import InceptionFeatures, features_and_stats, frechet_distance, precision_recall
from svg_diffusion.evaluation.sources import nhwc_uint8_images
from svg_diffusion.pipeline import SVGPipeline
from svg_diffusion.sample_writer import class_labels, iter_samples, sample_noise
from svg_diffusion.utils.files import atomic_path
from svg_diffusion.utils.shipped import DEMO_PIPELINE_DIR

from reporting import DOCS, REPO, replace_block

PAGES = [DOCS / "demo.md", REPO / "README.md"]
START, END = "<!-- demo-quality:start -->", "<!-- demo-quality:end -->"
REAL = "fashion_mnist:test"
REFERENCE = "fashion_mnist:train"


def sample_all(pipe: SVGPipeline, num: int, seed: int, batch_size: int, **options) -> tuple[np.ndarray, float]:
    """``num`` balanced samples as uint8 [N, H, W, 3] and the seconds they took."""
    labels = class_labels(pipe, num=num)
    start = time.perf_counter()
    batches = [images for _, images in iter_samples(pipe, labels, range(num), seed, batch_size, **options)]
    return np.concatenate(batches), time.perf_counter() - start


def scores(real: tuple[torch.Tensor, object], fake_images: np.ndarray, inception: InceptionFeatures,
           batch_size: int) -> dict[str, float]:
    """FID and precision/recall of generated images (not cached: they are new every run) against ``real``."""
    real_features, real_stats = real
    fake_features, fake_stats = features_and_stats(nhwc_uint8_images(fake_images, "samples"), inception,
                                                   batch_size=batch_size, cache=False, progress=True)
    precision, recall = precision_recall(real_features, fake_features)
    return {"fid": frechet_distance(real_stats, fake_stats), "precision": precision, "recall": recall}


def fp16_parity(shipped: SVGPipeline, fp32_folder: str, num: int, seed: int) -> dict[str, float]:
    """Pixel differences between the shipped (float16-stored) pipeline and its float32 source, same noise."""
    fp32 = SVGPipeline.from_pretrained(fp32_folder)
    labels = class_labels(shipped, num=num)
    noise = sample_noise(shipped, range(num), seed)
    a = shipped(labels, latents=noise, output_type="np").astype(int)
    b = fp32(labels, latents=noise, output_type="np").astype(int)
    return {"num": num, "max_abs": int(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean()),
            "share_differing": float((a != b).mean())}


def table(rows: list[dict], reference: dict | None) -> str:
    # Sampling speed stays in the JSON only: on a shared machine it measures the load more than the sampler.
    lines = ["| sampler | steps | FID ↓ | precision ↑ | recall ↑ |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['sampler']} | {row['steps']} | {row['fid']:.1f} | {row['precision']:.3f} | "
                     f"{row['recall']:.3f} |")
    if reference is not None:
        lines.append(f"| *real training images* | – | {reference['fid']:.1f} | {reference['precision']:.3f} | "
                     f"{reference['recall']:.3f} |")
    return "\n".join(lines)


def write_docs(block: str) -> None:
    for path in PAGES:
        replace_block(path, START, END, block)
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(DEMO_PIPELINE_DIR))
    parser.add_argument("--num", type=int, default=2000, help="samples per row (and test images)")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25])
    parser.add_argument("--samplers", nargs="+", default=["euler"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--no-reference", action="store_true", help="skip the real-vs-real row")
    parser.add_argument("--fp32", default=None, help="the float32 pipeline the shipped one was exported from")
    parser.add_argument("--out", default="outputs/demo_quality.json")
    parser.add_argument("--fresh", action="store_true", help="recompute rows already in --out")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/demo.md and README.md")
    args = parser.parse_args()

    pipe = demo_pipeline(args.pipeline)
    guidance = pipe.sampling.guidance.scale
    out = Path(args.out)
    done = {} if args.fresh or not out.is_file() else json.loads(out.read_text())

    def save(key: str, row: dict) -> None:
        done[key] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(done, indent=2) + "\n")

    started, load_before = time.perf_counter(), os.getloadavg()
    inception = InceptionFeatures()
    real = features_and_stats(REAL, inception, limit=args.num, batch_size=args.batch_size, progress=True)
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            key = f"{args.pipeline}|{sampler}|{steps}|{args.num}|{args.seed}|{guidance}"
            if key not in done:
                images, seconds = sample_all(pipe, args.num, args.seed, args.batch_size, num_steps=steps,
                                             sampler=sampler)
                row = {"sampler": sampler, "steps": steps, "num": args.num, "guidance": guidance,
                       "images_per_second": args.num / seconds, **scores(real, images, inception, args.batch_size)}
                save(key, row)
            rows.append(done[key])
            print(rows[-1])
    reference = None
    if not args.no_reference:
        key = f"reference|{args.num}"
        if key not in done:
            train_features, train_stats = features_and_stats(REFERENCE, inception, limit=args.num,
                                                             batch_size=args.batch_size, progress=True)
            precision, recall = precision_recall(real[0], train_features)
            save(key, {"fid": frechet_distance(real[1], train_stats), "precision": precision, "recall": recall})
        reference = done[key]
    parity = None
    if args.fp32:
        key = f"parity|{args.pipeline}|{args.fp32}"
        if key not in done:
            save(key, fp16_parity(pipe, args.fp32, num=100, seed=args.seed))
        parity = done[key]

    minutes = (time.perf_counter() - started) / 60
    notes = [
        f"{args.num} samples per row ({args.num // 10} per class), guidance {guidance:g} "
        f"({pipe.sampling.guidance.mode}), time shift {pipe.sampling.shift:g}, seed {args.seed}; against the first "
        f"{args.num} Fashion-MNIST test images (32×32), Inception-v3 pool features, precision/recall with k = 3.",
        f"The last row compares the first {args.num} *training* images with the same test images: the FID of "
        "a perfect model at this sample size." if reference else "",
        f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"{minutes:.0f} min for this run of the benchmark (rows reused from {out} not counted), on a shared "
        f"machine (load average {load_before[0]:.1f} at the start).",
    ]
    if parity:
        notes.append(f"float16 storage: {parity['num']} samples (25 steps) from the shipped pipeline and from its "
                     f"float32 source, same noise: {100 * parity['share_differing']:.2f}% of pixel values differ, "
                     f"by {parity['mean_abs']:.4f} levels on average (max {parity['max_abs']} of 255).")
    block = table(rows, reference) + "\n\n" + "\n".join(f"- {note}" for note in notes if note)
    print(block)
    if args.docs:
        write_docs(block)


if __name__ == "__main__":
    main()
