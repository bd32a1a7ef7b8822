"""The SVG autoencoder ablation on the demo: encoder-only vs + residual vs + residual + distribution alignment.

The paper's table (DINOv3 alone rFID 1.17 / PSNR 18.8, + residual 0.78 / 24.3, + alignment
0.65 / 23.9) at demo scale: three variants of configs/demo/autoencoder.yaml on Fashion-MNIST 32x32 with the
shipped (pretrained) demo encoder, trained for the same steps with the same seed and data order, then
measured on the first ``--eval-images`` test images (PSNR, SSIM, LPIPS, rFID; ``evaluation.reconstruction``).
The untrained models are measured on the same images, so the table also shows where training started.

- encoder only: ``model.residual.channels: 0``: the decoder sees the frozen features alone;
- + residual: the 8-channel residual ViT, ``model.alignment: none`` (raw residual next to the features);
- + residual + alignment: the demo config as it is (running alignment statistics).

Runs resume (rerun the same command after an interruption). With ``--docs`` the tables replace the block in
docs/autoencoder.md and a picture of the reconstructions goes to docs/images/.

    OMP_NUM_THREADS=1 python benchmarks/autoencoder_ablation.py --docs
    python benchmarks/autoencoder_ablation.py --steps 20 --eval-images 64 --random-encoder   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import warnings
from pathlib import Path

import torch

from svg_diffusion.autoencoder import SVGAutoencoder
from svg_diffusion.config import load_config
from svg_diffusion.data import FashionMNIST, build_dataset
from svg_diffusion.evaluation import fid_stats
from svg_diffusion.evaluation.reconstruction import METRICS_FILE, evaluate_reconstruction, format_metrics_table
from svg_diffusion.trainers.autoencoder import AutoencoderTrainConfig, train_autoencoder
from svg_diffusion.training import derive_seed, read_records
from svg_diffusion.utils.files import atomic_path
from svg_diffusion.utils.images import save_image_grid
from svg_diffusion.utils.shipped import DEMO_ENCODER_DIR

from reporting import DOCS, IMAGES, REPO, replace_block

PAGE = DOCS / "autoencoder.md"
PICTURE = IMAGES / "autoencoder_ablation.png"
START, END = "<!-- autoencoder-ablation:start -->", "<!-- autoencoder-ablation:end -->"
PICTURE_IMAGES = 10


def variants(config_path: str) -> dict[str, list[str]]:
    """Config overrides per variant (the encoder-only decoder reads the encoder's channels only)."""
    base = load_config(AutoencoderTrainConfig, config_path).model
    encoder_channels = base.decoder.z_channels - base.residual.channels
    return {
        "encoder only": ["model.residual.channels=0", f"model.decoder.z_channels={encoder_channels}"],
        "+ residual": ["model.alignment=none"],
        "+ residual + alignment": [],
    }


def untrained(config: AutoencoderTrainConfig) -> SVGAutoencoder:
    """The model the run starts from (the engine seeds initialization this way), with alignment statistics
    of one training batch so that it can encode in eval mode."""
    torch.manual_seed(derive_seed(config.engine.seed, "init"))
    model = SVGAutoencoder.from_config(config.model)
    train = build_dataset(config.data, "train", progress=False)
    model.estimate_alignment_statistics([torch.stack([train[i][0] for i in range(config.engine.global_batch_size)])])
    return model


def saved_metrics(eval_dir: Path, model_dir: Path) -> dict | None:
    """The metrics an earlier run of this script wrote for this very model (an interrupted run skips them)."""
    saved = eval_dir / METRICS_FILE
    if saved.is_file() and saved.stat().st_mtime > (model_dir / "model.safetensors").stat().st_mtime:
        return json.loads(saved.read_text())
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo" / "autoencoder.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="training steps per variant (default: the config's)")
    parser.add_argument("--eval-images", type=int, default=2000, help="the first N test images")
    parser.add_argument("--out", default="runs/ablation/autoencoder")
    parser.add_argument("--random-encoder", action="store_true",
                        help="use a randomly initialized demo encoder (smoke runs; refused with --docs)")
    parser.add_argument("--docs", action="store_true", help="write the tables into docs/autoencoder.md and the picture")
    args = parser.parse_args()
    if args.docs and args.random_encoder:
        raise SystemExit("--docs needs the pretrained demo encoder, not --random-encoder")
    if not args.random_encoder and not (DEMO_ENCODER_DIR / "model.safetensors").is_file():
        raise SystemExit(f"the demo encoder {DEMO_ENCODER_DIR} is not there yet (or pass --random-encoder)")
    encoder = "demo" if args.random_encoder else str(DEMO_ENCODER_DIR)
    out = Path(args.out)
    warnings.simplefilter("ignore", UserWarning)  # "encoder 'demo' has no weights" in smoke runs

    test = FashionMNIST("test", image_size=32, limit=args.eval_images)
    reference = fid_stats("fashion_mnist:test", image_size=32, limit=args.eval_images, progress=True)
    results, pictures = {}, [torch.stack([test[i][0] for i in range(PICTURE_IMAGES)])]
    for name, overrides in variants(args.config).items():
        slug = re.sub(r"\W+", "_", name).strip("_")
        settings = [f"engine.out_dir={out / slug}", f"model.encoder={encoder}", *overrides]
        config = load_config(AutoencoderTrainConfig, args.config, settings)
        if args.steps is not None:  # the critic joins at the same fraction of the run
            config.loss.disc_start = round(config.loss.disc_start * args.steps / config.engine.max_steps)
            config.engine.max_steps = args.steps
        start = evaluate_reconstruction(untrained(config), test, rfid=False, progress=False)
        started = time.perf_counter()
        folder = train_autoencoder(config, resume=True)
        minutes = (time.perf_counter() - started) / 60
        model = SVGAutoencoder.from_pretrained(folder)
        metrics = saved_metrics(out / slug / "eval", folder) or evaluate_reconstruction(
            model, test, reference=reference, out_dir=out / slug / "eval", progress=True)
        speeds = [r["steps_per_sec"] for r in read_records(out / slug / "metrics.jsonl")]
        results[name] = {**metrics, "psnr_untrained": start["psnr"], "minutes": minutes,
                         "steps": config.engine.max_steps, "steps_per_sec": sum(speeds) / len(speeds)}
        with torch.no_grad():
            pictures.append(model.decode(model.encode(pictures[0])).clamp(-1, 1))
        print(format_metrics_table({name: metrics}), flush=True)

    steps = {r["steps"] for r in results.values()}.pop()
    table = format_metrics_table(results)
    progress = ["| model | PSNR untrained | PSNR trained | training steps/s |", "|---|---:|---:|---:|"]
    progress += [f"| {name} | {r['psnr_untrained']:.2f} | {r['psnr']:.2f} | {r['steps_per_sec']:.2f} |"
                 for name, r in results.items()]
    critic = f"critic from step {config.loss.disc_start}" if config.loss.disc_start < steps else "L1 + LPIPS, no critic"
    setting = (f"Fashion-MNIST 32x32, {steps} steps at batch {config.engine.global_batch_size} per variant "
               f"(`{config.engine.precision}`, {critic}), metrics on the first "
               f"{args.eval_images} test images; {'RANDOM' if args.random_encoder else 'the pretrained'} demo encoder; "
               f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
               f"shared with other jobs. Command: `OMP_NUM_THREADS=1 python benchmarks/autoencoder_ablation.py"
               f"{'' if args.steps is None else f' --steps {args.steps}'} --docs`.")
    print(table + "\n\n" + "\n".join(progress) + "\n\n" + setting)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    if args.docs:
        replace_block(PAGE, START, END, f"{table}\n\n" + "\n".join(progress) + f"\n\n{setting}")
        save_image_grid(torch.cat(pictures), PICTURE, nrow=PICTURE_IMAGES, row_labels=["original", *results])
        print(f"wrote {PAGE} and {PICTURE}")


if __name__ == "__main__":
    main()
