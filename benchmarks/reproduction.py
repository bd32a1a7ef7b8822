"""Small-scale reproduction on Fashion-MNIST 32x32: SVG latents vs the VAE baseline with the same DiT recipe.

Arms (the same DiT config, seed, data order and steps; only the autoencoder and its latent cache differ):

- SVG: the demo autoencoder (configs/demo/autoencoder.yaml: frozen demo encoder + residual, 8x8x136) and
  configs/demo/diffusion.yaml;
- VAE: the KL autoencoder of configs/demo/vae.yaml (8x8x4, same decoder, losses, steps) and
  configs/demo/vae_diffusion.yaml (configs/demo/diffusion.yaml with the VAE's folder and cache).

Measurements, each written to ``--out``/results.json as soon as it is made (a rerun skips what is there and
continues the DiT runs where they stopped: the engine's resume is exact and ``max_steps`` is raised per
segment; the constant learning rate does not depend on it):

1. ``fid``: generation FID at each of ``--steps`` (the config's sampler: 25 Euler steps, CFG 1.5, shift 2);
2. ``sampling``: at the last of ``--steps``, FID for ``--sampling-steps`` with and without CFG;
3. ``probe``: the fixed linear probe / k-NN protocol (``evaluation.probe``) on the flattened 8x8 maps of the
   demo encoder's features, the SVG latent, the VAE latent, and on raw pixels;
4. ``reconstruction``: the VAE evaluated like the SVG autoencoders (eval-autoencoder, first 2000 test
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
is trained here like the VAE arm.

    OMP_NUM_THREADS=1 python benchmarks/reproduction.py --docs          # needs runs/demo/vae/autoencoder
    python benchmarks/reproduction.py --docs --only docs                 # rewrite docs/results.md from results.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from svg_diffusion.autoencoder import load_autoencoder
from svg_diffusion.config import load_config, to_dict
from svg_diffusion.data import FashionMNIST
from svg_diffusion.evaluation import fid_stats
from svg_diffusion.evaluation.fid import frechet_distance
from svg_diffusion.evaluation.inception import InceptionFeatures
from svg_diffusion.evaluation.probe import evaluate_features
from svg_diffusion.evaluation.features import extract_features
from svg_diffusion.evaluation.reconstruction import METRICS_FILE, eval_autoencoder
from svg_diffusion.sample_writer import class_labels, iter_samples
from svg_diffusion.trainers.diffusion import (
    DiffusionTrainConfig, DiffusionTrainer, cache_training_latents, dataset_classes, train_diffusion, training_dataset,
)
from svg_diffusion.training import checkpoint_path, load_checkpoint, read_records
from svg_diffusion.utils.files import atomic_path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "results.md"
IMAGES = REPO / "docs" / "images"
START, END = "<!-- reproduction:start -->", "<!-- reproduction:end -->"
ARMS = {"SVG": REPO / "configs/demo/diffusion.yaml", "VAE": REPO / "configs/demo/vae_diffusion.yaml"}  # --svg/--vae-config
VARIANTS: dict[str, dict] = {}  # name -> {"base": main arm, "overrides": ["key=value", ...]} (--variant)
SVG_AUTOENCODER_EVAL = REPO / "runs/demo/autoencoder/eval" / METRICS_FILE
ABLATION = REPO / "runs/ablation/autoencoder"
ABLATION_VARIANTS = {"encoder only": "encoder_only", "+ residual": "residual", "+ residual + alignment": "residual_alignment"}
# Engine settings that may differ between a borrowed checkpoint's run and ours without changing training.
FREE_ENGINE_KEYS = {"out_dir", "max_steps", "keep_last_checkpoints", "log_every", "sample_every", "checkpoint_every"}


class Results:
    """results.json: nested dict written atomically after every measurement, safe to share between processes
    (a write re-reads the file under an exclusive lock, so another process's entries are kept)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = self._read()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, *keys):
        node = self.data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def put(self, value, *keys) -> None:
        self._update(lambda _: value, keys)

    def add(self, amount: float, *keys) -> None:
        """Add to a number (missing: 0), e.g. wall time of a stage that several processes share."""
        self._update(lambda old: (old or 0) + amount, keys)

    def _update(self, new_value, keys) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.data = self._read()
            node = self.data
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = new_value(node.get(keys[-1]))
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.data, indent=2) + "\n")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# DiT runs
# ---------------------------------------------------------------------------------------------------------


def run_dir(arm: str, out: Path) -> Path:
    return out / (re.sub(r"[^a-z0-9]+", "_", arm.lower()) + "_dit")  # svg_dit, vae_dit, svg_shift_3_dit


def arm_config(arm: str, out: Path, max_steps: int) -> DiffusionTrainConfig:
    overrides = [f"engine.out_dir={run_dir(arm, out)}", f"engine.max_steps={max_steps}", "engine.keep_last_checkpoints=3"]
    if arm in VARIANTS:
        return load_config(DiffusionTrainConfig, ARMS[VARIANTS[arm]["base"]], overrides + VARIANTS[arm]["overrides"])
    return load_config(DiffusionTrainConfig, ARMS[arm], overrides)


def recipe(config: dict) -> dict:
    """A diffusion config as a dict without the settings that do not change what is trained."""
    return {**config, "engine": {k: v for k, v in config["engine"].items() if k not in FREE_ENGINE_KEYS}}


def borrowed_checkpoint(config: DiffusionTrainConfig, folder: Path | None, step: int) -> Path | None:
    """``folder``'s checkpoint at ``step``, when ``folder/config.yaml`` (the run's config, copied with its
    checkpoints) and the checkpoint's engine settings are the recipe of ``config``."""
    if folder is None or not checkpoint_path(folder, step).is_file():
        return None
    path = checkpoint_path(folder, step)
    ours = recipe(to_dict(config))
    theirs = recipe(to_dict(load_config(DiffusionTrainConfig, folder / "config.yaml")))
    engine = recipe({"engine": load_checkpoint(path)["config"]})["engine"]
    differ = [key for key in ours if theirs.get(key) != ours[key]]
    differ += [f"engine.{key}" for key in ours["engine"] if engine.get(key) != ours["engine"][key]]
    if differ:
        raise SystemExit(f"{path} was trained with other settings ({', '.join(differ)}): not the same recipe")
    return path


def checkpoint_at(arm: str, step: int, args, results: Results) -> Path:
    """The arm's DiT checkpoint after ``step`` steps: borrowed (SVG), already trained, or trained now."""
    config = arm_config(arm, args.out, step)
    borrowed = borrowed_checkpoint(config, args.svg_checkpoints, step) if arm == "SVG" else None
    if borrowed is not None:
        return borrowed
    own = checkpoint_path(config.engine.out_dir, step)
    if not own.is_file():
        log(f"{arm}: training the DiT to step {step} in {config.engine.out_dir}")
        started = time.perf_counter()
        train_diffusion(config, resume=True)
        if not own.is_file():  # the engine saves and returns on SIGINT/SIGTERM
            raise SystemExit(f"{arm}: training stopped before step {step}; run the script again to continue")
        results.put(time.perf_counter() - started, "wall_s", "dit_training", arm, str(step))
    return own


def pipeline_at(arm: str, checkpoint: Path, args):
    """The EMA pipeline of a DiT checkpoint (the latent statistics are the checkpoint's)."""
    config = arm_config(arm, args.out, 1)
    autoencoder = load_autoencoder(config.autoencoder)
    dataset = training_dataset(config, autoencoder, progress=False)  # checks the cache against the autoencoder
    trainer = DiffusionTrainer(config, autoencoder, dataset.statistics(), dataset_classes(dataset), cached=True,
                               device=torch.device("cpu"))
    trainer.load_state_dict(load_checkpoint(checkpoint)["trainer"])
    return trainer.ema_pipeline()


def ensure_vae_cache() -> None:
    config = load_config(DiffusionTrainConfig, ARMS["VAE"])
    if not (Path(config.latent_cache) / "index.json").is_file():
        log(f"caching the VAE latents into {config.latent_cache}")
        cache_training_latents(config)


# ---------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------


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
    """Linear probe + k-NN of four feature sets of the same images (flattened 8x8 maps; pixels flattened)."""
    names = ["pixels", "demo encoder features", "SVG latent", "VAE latent"]
    if all(results.get("probe", name) is not None for name in names):
        return
    train = FashionMNIST("train", image_size=32, limit=args.probe_train)
    test = FashionMNIST("test", image_size=32, limit=args.probe_test)
    svg = load_autoencoder(load_config(DiffusionTrainConfig, ARMS["SVG"]).autoencoder)
    vae = load_autoencoder(load_config(DiffusionTrainConfig, ARMS["VAE"]).autoencoder)
    encoder_dims = svg.encoder.embed_dim * svg.latent_size**2  # the SVG latent's first channels are the features

    def features(fn):
        return [extract_features(fn, split, mode="patch", batch_size=250, progress=True) for split in (train, test)]

    latent_sets = {"pixels": lambda: features(lambda x: x), "SVG latent": lambda: features(svg.encode),
                   "VAE latent": lambda: features(vae.encode)}
    cached = {}
    for name in names:
        if results.get("probe", name) is not None:
            continue
        started = time.perf_counter()
        source = "SVG latent" if name == "demo encoder features" else name
        if source not in cached:
            cached[source] = latent_sets[source]()
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


def measure_reconstruction(args, results: Results) -> None:
    """The VAE through eval-autoencoder; the SVG rows from the saved evaluations (not rerun here)."""
    vae_dir = Path(load_config(DiffusionTrainConfig, ARMS["VAE"]).autoencoder)
    eval_dir = vae_dir.parent / "eval"
    if not (eval_dir / METRICS_FILE).is_file():
        log("evaluating the VAE's reconstructions (eval-autoencoder, first 2000 test images)")
        eval_autoencoder(vae_dir, limit=2000, out_dir=eval_dir, progress=True)
    rows = {"VAE (KL, 8x8x4)": {**json.loads((eval_dir / METRICS_FILE).read_text()),
                                "steps": trained_steps(vae_dir.parent)}}
    if SVG_AUTOENCODER_EVAL.is_file():
        rows["SVG demo (+ residual + alignment)"] = {**json.loads(SVG_AUTOENCODER_EVAL.read_text()),
                                                    "steps": trained_steps(SVG_AUTOENCODER_EVAL.parents[1])}
    for label, slug in ABLATION_VARIANTS.items():
        saved = ABLATION / slug / "eval" / METRICS_FILE
        if saved.is_file():
            rows[f"ablation: {label}"] = {**json.loads(saved.read_text()), "steps": trained_steps(ABLATION / slug)}
    results.put(rows, "reconstruction")


# ---------------------------------------------------------------------------------------------------------
# The docs
# ---------------------------------------------------------------------------------------------------------


def plot(results: Results, args) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if results.get("fid"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        variants = results.get("variants") or {}
        for arm, points in results.get("fid").items():
            steps = sorted(int(s) for s in points)
            ax.plot(steps, [points[str(s)]["fid"] for s in steps], marker="o", linestyle="--" if arm in variants else "-",
                    label=f"{arm} (variant)" if arm in variants else f"{arm} latents")
        ax.set(xlabel="DiT training steps (batch 128)", ylabel="FID", title="Generation FID vs training steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(IMAGES / "reproduction_fid_vs_steps.png")
        fig.tight_layout()
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    if results.get("sampling"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for arm, points in results.get("sampling").items():
            for scale in sorted({key.split("/")[1] for key in points}, reverse=True):
                keys = sorted((k for k in points if k.split("/")[1] == scale), key=lambda k: int(k.split("/")[0]))
                ax.plot([int(k.split("/")[0]) for k in keys], [points[k]["fid"] for k in keys], marker="o",
                        linestyle="-" if scale != "1" else "--", label=f"{arm}, CFG {scale}")
        ax.set(xscale="log", xlabel="sampling steps (Euler)", ylabel="FID", title="FID vs sampling steps")
        ax.set_xticks(args.sampling_steps, [str(n) for n in args.sampling_steps])
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(IMAGES / "reproduction_fid_vs_sampling.png")
        fig.tight_layout()
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def fid_cell(point: dict | None) -> str:
    return "not measured" if point is None else f"{point['fid']:.1f}"


def minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min"


def preamble(results: Results, args) -> list[str]:
    setting, wall = results.get("setting") or {}, results.get("wall_s") or {}
    stages = ", ".join(f"{stage} {minutes(t)}" for stage, t in (wall.get("stages") or {}).items())
    threads = ", ".join(f"{stage} {n}" for stage, n in (setting.get("threads") or {}).items())
    borrowed = [s for s in args.steps if checkpoint_path(args.svg_checkpoints, s).is_file()]
    training = "; ".join(f"{arm} " + ", ".join(f"to {s}: {minutes(t)}" for s, t in runs.items())
                         for arm, runs in (wall.get("dit_training") or {}).items())
    return [
        "Fashion-MNIST 32×32, two arms that differ only in the autoencoder: **SVG** = the demo autoencoder",
        "(frozen demo encoder + 8-channel residual, 8×8×136 latents; configs/demo/autoencoder.yaml) and **VAE** = a",
        "KL-regularized conv autoencoder with the same decoder, losses, optimizer, steps and batch (8×8×4 latents,",
        "KL weight 1e-6; configs/demo/vae.yaml, `svg_diffusion.autoencoder.vae`). Both latents train the same DiT",
        "(configs/demo/diffusion.yaml vs configs/demo/vae_diffusion.yaml: same model, flow, optimizer, seed, data",
        "order, batch 128, EMA 0.999 with warmup), so equal steps are equal compute (the DiT differs only in its input and",
        "output channels).",
        "",
        "```",
        "svg-diffusion train-autoencoder --config configs/demo/vae.yaml --set engine.max_steps=600  # see (4)",
        "svg-diffusion cache-latents --config configs/demo/vae_diffusion.yaml   # the script does it when missing",
        f"OMP_NUM_THREADS=1 python benchmarks/reproduction.py --steps {' '.join(map(str, args.steps))} "
        + ("" if args.sampling_at == args.steps[-1] else f"--sampling-at {args.sampling_at} ")
        + f"--samples {args.samples} --probe-train {args.probe_train} --probe-test {args.probe_test} --docs",
        "```",
        "",
        f"- FID: {setting.get('samples', args.samples)} generated images (classes balanced, DiT in bf16, sample i",
        f"  from seed (0, i)) against the Inception statistics of the first {setting.get('reference', args.reference)}",
        "  test images; with this few samples FID is biased upward, so only compare numbers within these tables.",
        f"- SVG arm at step(s) {', '.join(map(str, borrowed)) or 'none'}: the checkpoints of the demo run of",
        "  configs/demo/diffusion.yaml (runs/demo/diffusion, copied before pruning; the script checks that the run's",
        "  config is this recipe); at the other steps the script trained the arm itself with the same config. VAE",
        "  arm: trained by the script in segments (exact resume; the constant learning rate after warmup does not",
        "  depend on `max_steps`).",
        f"- Machine: {setting.get('machine', '?')}, a 2-core CPU shared with other jobs (timings are not speeds of",
        f"  the methods); torch threads per stage: {threads or '?'}. Time per stage (summed over processes where",
        f"  several ran one stage side by side): {stages or '?'}; of which DiT training: {training or '?'}.",
        "",
    ]


def markdown(results: Results, args) -> str:
    lines = preamble(results, args)
    fid = results.get("fid") or {}
    steps = sorted({int(s) for points in fid.values() for s in points})
    lines += ["### (1) Generation FID vs DiT training steps", ""]
    if steps:
        lines += ["| DiT steps | " + " | ".join(f"{arm} latents" for arm in ARMS) + " |",
                  "|---:|" + "---:|" * len(ARMS)]
        lines += [f"| {s} | " + " | ".join(fid_cell(results.get("fid", arm, str(s))) for arm in ARMS) + " |"
                  for s in steps]
        lines += ["", "![FID vs training steps](images/reproduction_fid_vs_steps.png)"]
    else:
        lines += ["Not measured."]
    sampling = results.get("sampling") or {}
    keys = sorted({k for points in sampling.values() for k in points},
                  key=lambda k: (-float(k.split("/")[1]), int(k.split("/")[0])))
    lines += ["", f"### (2) FID vs sampling steps (DiT after {args.sampling_at} steps)", ""]
    if keys:
        lines += ["| Euler steps | CFG scale | " + " | ".join(f"{arm} latents" for arm in ARMS) + " |",
                  "|---:|---:|" + "---:|" * len(ARMS)]
        lines += [f"| {k.split('/')[0]} | {k.split('/')[1]} | "
                  + " | ".join(fid_cell(results.get("sampling", arm, k)) for arm in ARMS) + " |" for k in keys]
        lines += ["", "![FID vs sampling steps](images/reproduction_fid_vs_sampling.png)"]
    else:
        lines += ["Not measured."]
    probe = results.get("probe") or {}
    lines += ["", "### (3) Linear probe (fixed protocol of `evaluation.probe`)", ""]
    if probe:
        lines += ["| features (flattened 8×8 map) | dim | linear probe | k-NN (k=20) | train / test images |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {name} | {r['dim']} | {100 * r['linear_top1']:.1f}% | {100 * r['knn_top1']:.1f}% | "
                  f"{r['num_train']} / {r['num_test']} |" for name, r in probe.items()]
    else:
        lines += ["Not measured."]
    recon = results.get("reconstruction") or {}
    lines += ["", "### (4) Reconstruction (first 2000 test images, `eval-autoencoder`)", ""]
    if recon:
        lines += ["| autoencoder | latent | training steps (batch 32) | PSNR ↑ | SSIM ↑ | LPIPS ↓ | rFID ↓ |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        shapes = {"VAE": "8×8×4", "encoder only": "8×8×128"}
        for name, r in recon.items():
            shape = next((v for k, v in shapes.items() if k in name), "8×8×136")
            lines.append(f"| {name} | {shape} | {r.get('steps') or '?'} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                         f"{r['lpips']:.4f} | {r['rfid']:.1f} |")
    else:
        lines += ["Not measured."]
    return "\n".join(lines + variants_table(results))


def variants_table(results: Results) -> list[str]:
    """(5): FID of the main arms and their variants (rows) at each DiT step (columns)."""
    variants = results.get("variants") or {}
    if not variants:
        return []
    rows = [*ARMS, *variants]
    fid, matched = results.get("fid") or {}, results.get("matched_shift") or {}
    steps = sorted({int(s) for arm in rows for s in fid.get(arm, {})})
    last = str(max((int(s) for arm in rows for s in matched.get(arm, {})), default=steps[-1] if steps else 0))
    default = load_config(DiffusionTrainConfig, ARMS["SVG"]).sampling
    about = ("Arms that change one or two settings of a main arm's recipe (`--variant NAME BASE KEY=VALUE ...` "
             "of the script; the same as `--set KEY=VALUE` on `svg-diffusion train`), everything else as above. "
             f"FID with the config's sampler (25 Euler steps, CFG {default.guidance.scale:g}, sampling shift "
             f"{default.shift:g}); last column: the checkpoints of step {last} sampled with the sampling shift "
             "equal to the arm's training shift k.")
    lines = ["", "### (5) Variants of the DiT recipe", "", about, "",
             "| arm | recipe | " + " | ".join(f"step {s}" for s in steps) + f" | step {last}, sampling shift = k |",
             "|---|---|" + "---:|" * (len(steps) + 1)]
    for arm in rows:
        recipe_text = ", ".join(f"`{o}`" for o in variants[arm]["overrides"]) if arm in variants else "as in (1)"
        point = matched.get(arm, {}).get(last)
        shift = "" if point is None else f"k = {point['shift']:g}: "
        lines.append(f"| {arm} | {recipe_text} | " + " | ".join(fid_cell(fid.get(arm, {}).get(str(s))) for s in steps)
                     + f" | {shift}{fid_cell(point) if point else '—'} |")
    return lines


def copy_sample_grids(args) -> list[str]:
    """Each arm's preview grid (the trainer's, CFG 4, same noise) at the last of ``--steps``, into docs/images."""
    lines, name = [], f"samples/step_{args.steps[-1]:08d}.png"
    for arm in ARMS:
        folders = [run_dir(arm, args.out)] + ([args.svg_checkpoints] if arm == "SVG" else [])  # borrowed: SVG only
        found = [folder / name for folder in folders if (folder / name).is_file()]
        if found:
            target = IMAGES / f"reproduction_samples_{arm.lower()}.png"
            with atomic_path(target) as tmp:
                tmp.write_bytes(found[0].read_bytes())
            lines.append(f"![{arm} latents, DiT step {args.steps[-1]}](images/{target.name})")
    return lines


def write_docs(results: Results, args) -> None:
    plot(results, args)
    grids = copy_sample_grids(args)
    if grids:
        grids = ["", f"Preview grids at DiT step {args.steps[-1]} (EMA, 25 Euler steps, CFG 4, one row per class; "
                 "left SVG, right VAE):", "", " ".join(grids)]
    block = f"{START}\n{markdown(results, args)}\n" + "\n".join(grids) + f"\n{END}"
    text = DOCS.read_text()  # read right before writing: another section of this file has another author
    if START in text:
        text, count = re.subn(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        assert count == 1
    else:
        text = text.rstrip("\n") + "\n\n## Small-scale reproduction (`benchmarks/reproduction.py`)\n\n" + block + "\n"
    with atomic_path(DOCS) as tmp:
        tmp.write_text(text)
    log(f"wrote {DOCS}")


# ---------------------------------------------------------------------------------------------------------


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
    parser.add_argument("--svg-config", type=Path, default=ARMS["SVG"], help="the SVG arm's diffusion config")
    parser.add_argument("--vae-config", type=Path, default=ARMS["VAE"], help="the VAE arm's diffusion config")
    parser.add_argument("--matched-at", type=int, default=None,
                        help="variants: DiT step of the FIDs at sampling shift = training shift (default: the last of --steps)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="main arms to measure in the fid and sampling stages (e.g. one per process)")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME BASE KEY=VALUE",
                        help="a variant arm for the 'variants' stage: a main arm (SVG or VAE) with config overrides; "
                             "repeat for more")
    parser.add_argument("--only", nargs="+", choices=["reconstruction", "fid", "probe", "sampling", "variants", "docs"],
                        default=["fid", "reconstruction", "probe", "sampling", "variants"])
    parser.add_argument("--docs", action="store_true", help="write the tables and plots into docs/results.md")
    args = parser.parse_args()
    args.steps = sorted(args.steps)
    args.sampling_at = args.sampling_at or args.steps[-1]
    args.matched_at = args.matched_at or args.steps[-1]
    ARMS.update(SVG=args.svg_config, VAE=args.vae_config)
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
            ensure_vae_cache()
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
