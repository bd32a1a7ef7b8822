"""Small-scale reproduction on Fashion-MNIST 32x32: SVG latents vs VAE baselines with the same DiT recipe.

Arms (the same DiT config, seed, data order and steps; only the autoencoder, its latent cache and the latent
transform differ):

- SVG: the demo autoencoder (configs/demo/autoencoder.yaml: frozen demo encoder + residual, 8x8x136) and
  configs/demo/diffusion.yaml, whose DiT models the latent's whitened top-16 PCA directions (8x8x16);
- VAE: the KL autoencoder of configs/demo/vae.yaml (8x8x4, same decoder, losses, steps) and
  configs/demo/vae_diffusion.yaml (configs/demo/diffusion.yaml with the VAE's folder and cache, the 4 channels
  normalized per channel);
- VAE-16: the same with 16 latent channels (configs/demo/vae16.yaml, configs/demo/vae16_diffusion.yaml): 8x8x16,
  as many numbers per image as the SVG arm's DiT models.

Measurements, each written to ``--out``/results.json as soon as it is made (a rerun skips what is there and
continues the DiT runs where they stopped: the engine's resume is exact and ``max_steps`` is raised per
segment; the constant learning rate does not depend on it):

1. ``fid``: generation FID at each of ``--steps`` (the config's sampler: 25 Euler steps, CFG 1.5, shift 2);
2. ``sampling``: at the last of ``--steps``, FID for ``--sampling-steps`` with and without CFG;
3. ``probe``: the fixed linear probe / k-NN protocol (``evaluation.probe``) on the flattened 8x8 maps of the
   demo encoder's features, each arm's autoencoder latent (SVG: all 136 channels), and on raw pixels;
4. ``reconstruction``: each VAE evaluated like the SVG autoencoders (eval-autoencoder, first 2000 test
   images), next to the demo SVG autoencoder and the ablation's variants (their saved JSON);
5. ``variants``: arms that change the recipe of a main arm (``--variant NAME BASE KEY=VALUE ...``, e.g.
   ``--variant "SVG shift 3" SVG flow.shift=3``), FID at each of ``--steps`` with the config's sampler, and
   at ``--matched-at`` (default: the last of ``--steps``) also with the sampling shift set to the training
   shift (for the variant, and for its base arm when the variant changes ``flow.shift``).

Several processes may share one results.json (e.g. one per ``--arms`` or ``--variant``, each on its own core):
every write re-reads the file under a lock and changes only its own entry.

FID: ``--samples`` generated images (classes balanced, sample i from seed (0, i), DiT in bf16) against the
Inception statistics of the first ``--reference`` Fashion-MNIST test images (cached by ``evaluation``).

The SVG arm's DiT checkpoints may come from a run of configs/demo/diffusion.yaml made elsewhere
(``--svg-checkpoints``, e.g. copies of runs/demo/diffusion/checkpoints): a checkpoint there is used when its
engine settings equal the config's (out_dir, max_steps and keep_last_checkpoints aside); otherwise the arm
is trained here like the VAE arms. A missing latent cache of an arm is made first (cache-latents).

    svg-diffusion train-autoencoder --config configs/demo/vae.yaml       # the VAE arms' autoencoders
    svg-diffusion train-autoencoder --config configs/demo/vae16.yaml
    svg-diffusion cache-latents --config configs/demo/vae16_diffusion.yaml   # optional: the script does it
    OMP_NUM_THREADS=1 python benchmarks/reproduction.py --docs           # all three arms
    OMP_NUM_THREADS=1 python benchmarks/reproduction.py --only fid sampling --arms VAE-16 --docs   # one arm
    python benchmarks/reproduction.py --docs --only docs                 # rewrite docs/results.md from results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from svg_diffusion.autoencoder import load_autoencoder
from svg_diffusion.config import load_config
from svg_diffusion.data import FashionMNIST
from svg_diffusion.evaluation import fid_stats
from svg_diffusion.evaluation.features import extract_features
from svg_diffusion.evaluation.fid import frechet_distance
from svg_diffusion.evaluation.inception import InceptionFeatures
from svg_diffusion.evaluation.probe import evaluate_features
from svg_diffusion.evaluation.reconstruction import METRICS_FILE, eval_autoencoder
from svg_diffusion.sample_writer import class_labels, iter_samples
from svg_diffusion.trainers.diffusion import DiffusionTrainConfig
from svg_diffusion.training import read_records

from reporting import REPO, Results
from reproduction_report import write_docs
from reproduction_runs import (
    ARMS, VAE_ARMS, VARIANTS, arm_config, checkpoint_at, ensure_latent_cache, log, pipeline_at, slug,
)

SVG_AUTOENCODER = REPO / "runs/demo/autoencoder/autoencoder"
ABLATION = REPO / "runs/ablation/autoencoder"  # its variants' autoencoder folders: ABLATION/<slug>/autoencoder
ABLATION_VARIANTS = {"encoder only": "encoder_only", "+ residual": "residual", "+ residual + alignment": "residual_alignment"}


class FID:
    """Generation FID against the fixed reference statistics, with one Inception network."""

    def __init__(self, args):
        self.inception = InceptionFeatures()
        self.reference = fid_stats("fashion_mnist:test", self.inception, image_size=32, limit=args.reference, progress=True)
        self.samples = args.samples

    def __call__(self, pipe, num_steps: int, guidance_scale: float, shift: float | None = None) -> dict:
        """FID of ``self.samples`` images; ``shift``: the sampling time shift (default: the pipeline's)."""
        started = time.perf_counter()
        labels = class_labels(pipe, num=self.samples)
        images = np.concatenate([pixels for _, pixels in iter_samples(
            pipe, labels, range(len(labels)), seed=0, batch_size=250, num_steps=num_steps,
            guidance_scale=guidance_scale, shift=shift, precision="bf16")])
        sampled = time.perf_counter()
        stats = fid_stats(images, self.inception, progress=True)
        return {"fid": frechet_distance(self.reference, stats), "samples": len(images), "num_steps": num_steps,
                "guidance_scale": guidance_scale, "shift": pipe.sampling.shift if shift is None else shift,
                "sampling_s": sampled - started, "inception_s": time.perf_counter() - sampled}


def measure_fid_vs_steps(args, results: Results, fid: FID, arms=None) -> None:
    default = load_config(DiffusionTrainConfig, ARMS["SVG"]).sampling
    for step in args.steps:
        for arm in args.arms if arms is None else arms:
            if results.get("fid", arm, str(step)) is not None:
                continue
            pipe = pipeline_at(arm, checkpoint_at(arm, step, args, results), args)
            result = fid(pipe, default.num_steps, default.guidance.scale)
            results.put(result, "fid", arm, str(step))
            log(f"{arm} step {step}: FID {result['fid']:.2f}")


def measure_fid_vs_sampling(args, results: Results, fid: FID) -> None:
    step, cfg = args.sampling_at, load_config(DiffusionTrainConfig, ARMS["SVG"]).sampling.guidance.scale
    settings = [(n, scale) for scale in (cfg, 1.0) for n in args.sampling_steps]
    for num_steps, scale in settings:
        for arm in args.arms:
            key = f"{num_steps}/{scale:g}"
            if results.get("sampling", arm, key) is not None:
                continue
            reuse = results.get("fid", arm, str(step))
            if reuse is not None and (reuse["num_steps"], reuse["guidance_scale"]) == (num_steps, scale):
                results.put(reuse, "sampling", arm, key)  # the same samples as the last FID-vs-steps point
                continue
            pipe = pipeline_at(arm, checkpoint_at(arm, step, args, results), args)
            result = fid(pipe, num_steps, scale)
            results.put({**result, "dit_step": step}, "sampling", arm, key)
            log(f"{arm} step {step}, {num_steps} sampling steps, CFG {scale:g}: FID {result['fid']:.2f}")


def measure_variants(args, results: Results, fid: FID) -> None:
    """The variants of this command line: their FID curves, and at ``--matched-at`` the FID with the sampling
    shift equal to the training shift (also for the base arm of a variant that changes the training shift)."""
    names = [variant[0] for variant in args.variant]
    measure_fid_vs_steps(args, results, fid, arms=tuple(names))
    step = args.matched_at
    base = {name: VARIANTS[name]["base"] for name in names}
    configs = {arm: arm_config(arm, args.out, step) for arm in [*names, *base.values()]}
    shifted = [base[name] for name in names if configs[name].flow.shift != configs[base[name]].flow.shift]
    for arm in dict.fromkeys(names + shifted):
        if results.get("matched_shift", arm, str(step)) is not None:
            continue
        config = configs[arm]
        pipe = pipeline_at(arm, checkpoint_at(arm, step, args, results), args)
        result = fid(pipe, config.sampling.num_steps, config.sampling.guidance.scale, shift=config.flow.shift)
        results.put(result, "matched_shift", arm, str(step))
        log(f"{arm} step {step}, sampling shift {config.flow.shift:g}: FID {result['fid']:.2f}")


def measure_probe(args, results: Results) -> None:
    """Linear probe + k-NN of feature sets of the same images: pixels, the demo encoder's features and each arm's
    autoencoder latent (flattened 8x8 maps; pixels flattened)."""
    latents = {f"{arm} latent": arm for arm in ARMS}
    names = ["pixels", "demo encoder features", *latents]
    if all(results.get("probe", name) is not None for name in names):
        return
    train = FashionMNIST("train", image_size=32, limit=args.probe_train)
    test = FashionMNIST("test", image_size=32, limit=args.probe_test)
    autoencoders = {arm: load_autoencoder(load_config(DiffusionTrainConfig, ARMS[arm]).autoencoder) for arm in ARMS}
    svg = autoencoders["SVG"]
    encoder_dims = svg.encoder.embed_dim * svg.latent_size**2  # the SVG latent's first channels are the features
    encoders = {"pixels": lambda x: x, **{name: autoencoders[arm].encode for name, arm in latents.items()}}
    cached = {}
    for name in names:
        if results.get("probe", name) is not None:
            continue
        started = time.perf_counter()
        source = "SVG latent" if name == "demo encoder features" else name
        if source not in cached:
            cached[source] = [extract_features(encoders[source], split, mode="patch", batch_size=250, progress=True)
                              for split in (train, test)]
        (train_x, train_y), (test_x, test_y) = cached[source]
        if name == "demo encoder features":
            train_x, test_x = train_x[:, :encoder_dims], test_x[:, :encoder_dims]
        result = evaluate_features(train_x, train_y, test_x, test_y)
        results.put({**result, "wall_s": time.perf_counter() - started}, "probe", name)
        log(f"probe {name}: linear {100 * result['linear_top1']:.1f}%, k-NN {100 * result['knn_top1']:.1f}%")


def trained_steps(run_dir: Path) -> int | None:
    """Optimizer steps a training run has logged (its last record)."""
    records = read_records(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    return records[-1]["step"] if records else None


def saved_evaluation(folder: Path) -> Path:
    """Where eval-autoencoder's metrics of an autoencoder folder (a run's out_dir/autoencoder) are kept."""
    return folder.parent / "eval" / METRICS_FILE


def reconstruction_row(folder: Path) -> dict:
    """The saved eval-autoencoder metrics of an autoencoder folder, its latent's shape [h, w, C] and the steps
    its run trained."""
    autoencoder = load_autoencoder(folder)
    return {**json.loads(saved_evaluation(folder).read_text()),
            "latent": [autoencoder.latent_size, autoencoder.latent_size, autoencoder.latent_channels],
            "steps": trained_steps(folder.parent)}


def measure_reconstruction(args, results: Results) -> None:
    """Each VAE arm's autoencoder through eval-autoencoder (when not evaluated yet); the SVG rows from the saved
    evaluations (not rerun here)."""
    rows = {}
    for arm in VAE_ARMS:
        folder = Path(load_config(DiffusionTrainConfig, ARMS[arm]).autoencoder)
        if not saved_evaluation(folder).is_file():
            log(f"{arm}: evaluating the VAE's reconstructions (eval-autoencoder, first 2000 test images)")
            eval_autoencoder(folder, limit=2000, out_dir=saved_evaluation(folder).parent, progress=True)
        rows[arm] = reconstruction_row(folder)
    saved = {"SVG demo (+ residual + alignment)": SVG_AUTOENCODER,
             **{f"ablation: {label}": ABLATION / name / "autoencoder" for label, name in ABLATION_VARIANTS.items()}}
    for label, folder in saved.items():
        if saved_evaluation(folder).is_file():
            rows[label] = reconstruction_row(folder)
    results.put(rows, "reconstruction")


def sampled_arms(stage: str, args) -> list[str]:
    """The arms whose DiT a sampling stage measures: ``--arms``, or the variants and the main arms they change
    (sampled at ``--matched-at`` when a variant changes the training shift)."""
    if stage != "variants":
        return list(args.arms)
    names = [name for name, *_ in args.variant]
    return list(dict.fromkeys(names + [VARIANTS[name]["base"] for name in names]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduction"), help="DiT runs and results.json")
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 1000], help="DiT steps with an FID")
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--sampling-at", type=int, default=None,
                        help="DiT step of the sampling-steps sweep (default: the last of --steps)")
    parser.add_argument("--samples", type=int, default=500, help="generated images per FID")
    parser.add_argument("--reference", type=int, default=2000, help="first N test images as the FID reference")
    parser.add_argument("--probe-train", type=int, default=5000)
    parser.add_argument("--probe-test", type=int, default=5000)
    parser.add_argument("--svg-checkpoints", type=Path, default=Path("runs/reproduction/svg_dit_checkpoints"),
                        help="checkpoints of a configs/demo/diffusion.yaml run to use for the SVG arm")
    for arm, config in ARMS.items():  # --svg-config, --vae-config, --vae16-config
        parser.add_argument(f"--{arm.lower().replace('-', '')}-config", dest=f"{slug(arm)}_config", type=Path,
                            default=config, help=f"the {arm} arm's diffusion config")
    parser.add_argument("--matched-at", type=int, default=None,
                        help="variants: DiT step of the FIDs at sampling shift = training shift (default: the last of --steps)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="main arms to measure in the fid and sampling stages (e.g. one per process)")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME BASE KEY=VALUE",
                        help=f"a variant arm for the 'variants' stage: a main arm ({', '.join(ARMS)}) with config "
                             "overrides; repeat for more")
    parser.add_argument("--only", nargs="+", choices=["reconstruction", "fid", "probe", "sampling", "variants", "docs"],
                        default=["fid", "reconstruction", "probe", "sampling", "variants"])
    parser.add_argument("--docs", action="store_true", help="write the tables and plots into docs/results.md")
    args = parser.parse_args()
    args.steps = sorted(args.steps)
    args.sampling_at = args.sampling_at or args.steps[-1]
    args.matched_at = args.matched_at or args.steps[-1]
    ARMS.update({arm: getattr(args, f"{slug(arm)}_config") for arm in ARMS})
    results = Results(args.out / "results.json")
    VARIANTS.update(results.get("variants") or {})
    for name, base, *overrides in args.variant:
        variant = {"base": base, "overrides": overrides}
        if base not in ARMS or not overrides or not all("=" in o for o in overrides):
            parser.error(f"--variant {name}: expected NAME BASE KEY=VALUE..., with BASE one of {', '.join(ARMS)}")
        if VARIANTS.get(name, variant) != variant or name in ARMS:
            parser.error(f"--variant {name}: the name is taken by another recipe ({VARIANTS.get(name, 'a main arm')})")
        VARIANTS[name] = variant
        arm_config(name, args.out, 1)  # a bad key or value fails now, not after hours

    stages = [stage for stage in ("fid", "reconstruction", "probe", "sampling", "variants") if stage in args.only]  # by priority
    if "variants" in stages and not args.variant:
        stages.remove("variants")
    if stages:
        for key, value in {"machine": f"{platform.machine()} CPU, torch {torch.__version__}",
                           "samples": args.samples, "reference": args.reference}.items():
            results.put(value, "setting", key)
        for stage in stages:  # stages may run in different processes with different thread counts
            results.put(torch.get_num_threads(), "setting", "threads", stage)
    fid = None
    for stage in stages:
        started = time.perf_counter()
        if stage == "reconstruction":
            measure_reconstruction(args, results)
        elif stage == "probe":
            measure_probe(args, results)
        else:
            for arm in sampled_arms(stage, args):
                ensure_latent_cache(arm, args.out)
            fid = fid or FID(args)
            if stage == "variants":
                for name, *_ in args.variant:
                    results.put(VARIANTS[name], "variants", name)
            {"fid": measure_fid_vs_steps, "sampling": measure_fid_vs_sampling,
             "variants": measure_variants}[stage](args, results, fid)
        results.add(time.perf_counter() - started, "wall_s", "stages", stage)
        if args.docs:
            write_docs(results, args)
    if args.docs and not stages:
        write_docs(results, args)


if __name__ == "__main__":
    main()
