"""Small-scale reproduction on Fashion-MNIST 32x32: SVG latents vs VAE baselines with the same DiT recipe.

Arms (the same DiT config, seed, data order and steps; only the autoencoder, its latent cache and the latent
transform differ; reproduction_runs.ARMS defines them, and the report reads what each is from them):

- SVG: the demo v1 autoencoder (configs/demo/autoencoder.yaml: frozen demo encoder + residual, 8x8x136) and
  configs/demo/diffusion.yaml, whose DiT models the latent's whitened top-16 PCA directions (8x8x16);
- VAE: the KL autoencoder of configs/demo/vae.yaml (8x8x4, same decoder, losses, steps) and
  configs/demo/vae_diffusion.yaml (configs/demo/diffusion.yaml with the VAE's folder and cache, the 4 channels
  normalized per channel);
- VAE-16: the same with 16 latent channels (configs/demo/vae16.yaml, configs/demo/vae16_diffusion.yaml): 8x8x16,
  as many numbers per image as the SVG arm's DiT models.

Measurements, each written to ``--out``/results.json as soon as it is made (a rerun skips what is there and
continues the DiT runs where they stopped: the engine's resume is exact and ``max_steps`` is raised per
segment; the constant learning rate does not depend on it; the engine keeps a run's last 3 checkpoints, so the
script hard-links the checkpoint of each step it measures into the run's milestones/ for the later stages):

1. ``fid``: generation FID at each of ``--steps`` (the config's sampler: 25 Euler steps, CFG 1.5, shift 2), and
   at the last step each arm's preview grid (the config's ``preview``, decoded with the arm's autoencoder);
2. ``sampling``: at ``--sampling-at``, FID for ``--sampling-steps`` with and without CFG;
3. ``probe``: the fixed linear probe / k-NN protocol (``evaluation.probe``) on the flattened 8x8 maps of raw
   pixels, the demo encoder's features and, per arm, its autoencoder's latent (SVG: all 136 channels) and what
   its DiT models of it (the latent through the arm's latent transform: SVG's 16 PCA coordinates);
4. ``reconstruction``: each arm's autoencoder through eval-autoencoder (first 2000 test images; its saved
   evaluation, made when missing), and for an arm whose transform drops directions (SVG's PCA-16) also
   through the transform: what a perfect DiT of that arm could give back; beside them the ablation's variants;
5. ``diagnosis``: where each arm's FID comes from, in the coordinates its DiT models (reproduction_diagnosis):
   the decoder's rFID with noise added there, and at each of ``--diagnosis-at`` how far the DiT's samples are
   from the real latents and its flow loss on held-out latents; ``--other-decoder``: the same samples decoded
   by another decoder of the arm's latent;
6. ``variants``: arms that change the recipe of a main arm (``--variant NAME BASE KEY=VALUE ...``, e.g.
   ``--variant "SVG shift 3" SVG flow.shift=3``), FID at each of ``--steps`` with the config's sampler, and
   at ``--matched-at`` (default: the last of ``--steps``) also with the sampling shift set to the training
   shift (for the variant, and for its base arm when the variant changes ``flow.shift``).

Several processes may share one results.json (e.g. one per ``--arms``, each on its own core): every write
re-reads the file under a lock and changes only its own entry. The file has a version; one of an earlier
version of the script (the two-arm run) is refused: give another ``--out``.

FID: ``--samples`` generated images (classes balanced, sample i from seed (0, i), DiT and decoder in bf16)
against the Inception statistics of the first ``--reference`` Fashion-MNIST test images (cached by ``evaluation``).

Fairness. Every arm decodes with a decoder trained in the demo autoencoder's recipe (configs/demo/autoencoder.yaml:
the same decoder, losses, optimizer, steps and batch), none with one fine-tuned afterwards: the SVG arm's config
names runs/demo/autoencoder/autoencoder, which must hold the demo v1 autoencoder, not demo v2's fine-tuned decoder
(demo-pipeline). runs/demo/autoencoder_v1 is that folder:

    mkdir -p runs/demo/autoencoder && cp -r runs/demo/autoencoder_v1 runs/demo/autoencoder/autoencoder

The script stops with one line naming the command when an arm's autoencoder folder is missing.

Borrowed SVG checkpoints. ``--svg-checkpoints RUN`` (a run's out_dir or its checkpoints/ folder) lends the SVG
arm the checkpoints of a DiT run made elsewhere, e.g. runs/demo/dit_pca16 (configs/demo/diffusion.yaml with
``--set autoencoder=demo-pipeline``). The script checks, once, that RUN/config.yaml is the SVG config's recipe
(engine out_dir, max_steps, keep_last_checkpoints and the logging/checkpoint intervals aside) and that the run's
autoencoder encodes exactly as the arm's (``export.same_latent``: every weight but the decoder's, the latent
cache's fingerprint; demo v2 only fine-tuned the decoder of v1), and per checkpoint that its engine settings are
the recipe's; so the DiT modelled the very latent the arm's v1 decoder decodes here. A step RUN has no
checkpoint of is trained here with the same config. The SVG arm's latent transform (probe, reconstruction) is
RUN/latent_transform, the one its DiT was trained with. RUN keeps only its last checkpoints: a folder holding
RUN's config.yaml, latent_transform/ and hard links of the checkpoints wanted (``cp -l``) is a run too.

CPU time of the full run (the defaults: --steps 1000 2000 4000 8000, 2000 samples per FID point; one thread per
process, two processes on this 2-core machine), from: ~1.5 DiT steps/s; 25-step CFG sampling ~6 s per 100
images (demo DiT, bf16, beside two trainings); Inception ~5.5 min per 2000 images; the VAE autoencoders 1200
steps at batch 32, ~0.7 steps/s (the ablation's SVG autoencoders trained at 0.6-0.75 at one thread):

- one FID point ~7.5 min (2 min sampling + 5.5 min Inception); the sampling sweep (7 new points, 25/1.5 is the
  last FID point's) ~47 min per arm;
- a VAE: training ~30 min, eval-autoencoder ~7 min, cache-latents of 60k images ~7 min: ~45 min each;
- a VAE arm's fid + sampling: DiT to 8000 steps 89 min + 4 FID points 30 min + sweep 47 min: ~2.8 h each;
- the SVG arm's (borrowed checkpoints): ~1.3 h; each step it must train itself adds ~11 min per 1000 steps
  (from the borrowed run's latest earlier checkpoint: the script links it into the arm's own run);
- reconstruction (SVG full latent and through PCA-16; the VAEs' come from step 1) ~15 min; probe (8 rows on
  5000 + 5000 images) ~20 min;
- diagnosis: the decoder noise rows ~17 min per arm (three Inception passes), the latent fit ~3 min per arm and
  step (sampling only), each other decoder ~10 min (sampling and two passes).

In all ~9 core-hours, ~5 h on the two cores: 45 min for step 1, then ~4 h (VAE + SVG) beside ~3.4 h (VAE-16
+ reconstruction + probe). A step 16000 adds ~1.7 h per core. Each line below is resumable (rerun it after a
stop; a DiT stopped by SIGTERM saves a checkpoint first) and runs under nohup, one per core:

    # 0. the SVG arm's autoencoder (demo v1) and DiT checkpoints: a run folder with those of --steps, hard links
    #    (runs/demo/dit_pca16 keeps its last 20 only: link the early ones before it prunes them)
    mkdir -p runs/demo/autoencoder && cp -r runs/demo/autoencoder_v1 runs/demo/autoencoder/autoencoder
    S=runs/reproduction_v2/svg_borrowed; mkdir -p $S/checkpoints
    cp -r runs/demo/dit_pca16/config.yaml runs/demo/dit_pca16/latent_transform $S/
    for s in 1000 2000 4000 8000; do cp -l runs/demo/dit_pca16/checkpoints/step_$(printf %08d $s).pt $S/checkpoints/; done
    # 1. the VAEs: train, evaluate (the reconstruction stage reads runs/demo/vae*/eval), cache the latents
    for v in vae vae16; do OMP_NUM_THREADS=1 nohup sh -c "
        svg-diffusion train-autoencoder --config configs/demo/$v.yaml --resume &&
        svg-diffusion eval-autoencoder --autoencoder runs/demo/$v/autoencoder --limit 2000 --out-dir runs/demo/$v/eval &&
        svg-diffusion cache-latents --config configs/demo/${v}_diffusion.yaml" > runs/logs/repro_$v.log 2>&1 & done
    # 2. the arms (after 1), one process per core, one results.json (each runs its stages in priority order)
    R="--out runs/reproduction_v2 --svg-checkpoints runs/reproduction_v2/svg_borrowed"
    OMP_NUM_THREADS=1 nohup python benchmarks/reproduction.py $R --only fid diagnosis sampling --arms VAE SVG > runs/logs/repro_a.log 2>&1 &
    OMP_NUM_THREADS=1 nohup python benchmarks/reproduction.py $R --only fid diagnosis reconstruction probe sampling --arms VAE-16 > runs/logs/repro_b.log 2>&1 &
    # 2b. (optional, after 2's fid stage) the SVG arm's samples decoded by the demo's later decoders of the same
    #    latent (scripts/reproduce_demo.sh stages 5 and 7 make them): how much of its FID is its v1 decoder's
    OMP_NUM_THREADS=1 python benchmarks/reproduction.py $R --only diagnosis --arms SVG --diagnosis-at 8000 \
        --other-decoder SVG runs/demo/decoder_finetune/autoencoder --other-decoder SVG runs/demo/decoder_noise/autoencoder
    # 3. the docs (tables, plots, grids into docs/results.md)
    python benchmarks/reproduction.py --out runs/reproduction_v2 --only docs --docs
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from svg_diffusion.autoencoder import load_autoencoder
from svg_diffusion.data import FashionMNIST
from svg_diffusion.diffusion.latent_transform import LatentTransform
from svg_diffusion.evaluation import fid_stats
from svg_diffusion.evaluation.features import extract_features
from svg_diffusion.evaluation.fid import frechet_distance
from svg_diffusion.evaluation.inception import InceptionFeatures
from svg_diffusion.evaluation.probe import evaluate_features
from svg_diffusion.evaluation.reconstruction import METRICS_FILE, eval_autoencoder
from svg_diffusion.sample_writer import class_labels, iter_samples, write_samples
from svg_diffusion.trainers.diffusion import preview_classes
from svg_diffusion.training import read_records

from reporting import REPO, Results
from reproduction_diagnosis import measure_diagnosis
from reproduction_report import write_docs
from reproduction_runs import (
    ARMS, RESULTS_VERSION, VARIANTS, arm_config, borrowed_run, checkpoint_at, describe_arm, dit_transform,
    ensure_latent_cache, grid_path, log, open_results, pipeline_at, require_autoencoder, shown, slug,
)

ABLATION = REPO / "runs/ablation/autoencoder"  # its variants' autoencoder folders: ABLATION/<slug>/autoencoder
ABLATION_VARIANTS = {"encoder only": "encoder_only", "+ residual": "residual", "+ residual + alignment": "residual_alignment"}
RECONSTRUCTION_IMAGES = 2000  # the first test images, as eval-autoencoder's saved evaluations


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


def fid_at(fid: FID, arm: str, step: int, args, results: Results, num_steps: int, guidance_scale: float,
           shift: float | None = None) -> dict:
    """The FID of the arm's DiT after ``step`` steps, with the checkpoint it sampled."""
    checkpoint = checkpoint_at(arm, step, args, results)
    result = fid(pipeline_at(arm, checkpoint, args), num_steps, guidance_scale, shift)
    return {**result, "checkpoint": shown(checkpoint)}


def measure_fid_vs_steps(args, results: Results, fid: FID, arms=None) -> None:
    default = arm_config("SVG", args.out, 1).sampling
    for step in args.steps:
        for arm in args.arms if arms is None else arms:
            if results.get("fid", arm, str(step)) is not None:
                continue
            result = fid_at(fid, arm, step, args, results, default.num_steps, default.guidance.scale)
            results.put(result, "fid", arm, str(step))
            log(f"{arm} step {step}: FID {result['fid']:.2f}")


def draw_preview_grids(args, results: Results) -> None:
    """Each arm's preview grid at the last of ``--steps``, drawn as its trainer draws it (the config's
    ``preview``), here so that a borrowed run's is decoded with the arm's autoencoder too."""
    step = args.steps[-1]
    for arm in args.arms:
        grid = grid_path(arm, step, args.out)
        if grid.is_file():
            continue
        config = arm_config(arm, args.out, step)
        pipe = pipeline_at(arm, checkpoint_at(arm, step, args, results), args)
        labels = class_labels(pipe, preview_classes(config.preview, pipe.class_names or []), config.preview.per_class)
        write_samples(pipe, labels, grid=grid, nrow=config.preview.per_class, seed=config.preview.seed,
                      batch_size=len(labels), progress=False, guidance_scale=config.preview.guidance_scale,
                      num_steps=config.preview.num_steps, precision=config.engine.precision)
        log(f"{arm}: preview grid of step {step} in {grid}")


def measure_fid_vs_sampling(args, results: Results, fid: FID) -> None:
    step, cfg = args.sampling_at, arm_config("SVG", args.out, 1).sampling.guidance.scale
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
            result = fid_at(fid, arm, step, args, results, num_steps, scale)
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
        result = fid_at(fid, arm, step, args, results, config.sampling.num_steps, config.sampling.guidance.scale,
                        shift=config.flow.shift)
        results.put(result, "matched_shift", arm, str(step))
        log(f"{arm} step {step}, sampling shift {config.flow.shift:g}: FID {result['fid']:.2f}")


def dit_features(latents: torch.Tensor, transform: LatentTransform,
                 latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """Flattened autoencoder latents [N, C*h*w] (``extract_features``' patch pooling of [N, C, h, w] maps) -> the
    flattened coordinates the arm's DiT models of them, ``transform.encode`` of each map: [N, k*h*w]."""
    return transform.encode(latents.reshape(len(latents), *latent_shape)).flatten(1)


def probe_rows() -> dict[str, dict]:
    """The probe's feature sets: name -> what they are (``features``: pixels, encoder, latent or transform)."""
    rows = {"pixels": {"features": "pixels"}, "demo encoder features": {"features": "encoder"}}
    for arm in ARMS:
        rows[f"{arm} latent"] = {"features": "latent", "arm": arm}
        rows[f"{arm} latent through its DiT's transform"] = {"features": "transform", "arm": arm}
    return rows


def measure_probe(args, results: Results) -> None:
    """Linear probe + k-NN of feature sets of the same images (flattened 8x8 maps; pixels flattened): pixels, the
    demo encoder's features, and per arm its autoencoder's latent and that latent through the arm's transform."""
    rows = probe_rows()
    if all(results.get("probe", name) is not None for name in rows):
        return
    splits = [FashionMNIST("train", image_size=32, limit=args.probe_train),
              FashionMNIST("test", image_size=32, limit=args.probe_test)]

    def extract(encode) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [extract_features(encode, split, mode="patch", batch_size=250, progress=True) for split in splits]

    @functools.cache
    def arm_latents(arm: str):
        """The arm's autoencoder and its flattened latents of both splits (encoded once for both of its rows)."""
        autoencoder = load_autoencoder(arm_config(arm, args.out, 1).autoencoder)
        return autoencoder, extract(autoencoder.encode)

    def features(row: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if row["features"] == "pixels":
            return extract(lambda images: images)
        if row["features"] == "encoder":  # the SVG latent's first channels are the demo encoder's features
            svg, latents = arm_latents("SVG")
            dims = svg.encoder.embed_dim * svg.latent_size**2
            return [(x[:, :dims], y) for x, y in latents]
        autoencoder, latents = arm_latents(row["arm"])
        if row["features"] == "latent":
            return latents
        transform = dit_transform(row["arm"], args, autoencoder)
        shape = (autoencoder.latent_channels, autoencoder.latent_size, autoencoder.latent_size)
        return [(dit_features(x, transform, shape), y) for x, y in latents]

    for name, row in rows.items():
        if results.get("probe", name) is not None:
            continue
        started = time.perf_counter()
        (train_x, train_y), (test_x, test_y) = features(row)
        result = evaluate_features(train_x, train_y, test_x, test_y)
        results.put({**result, **row, "wall_s": time.perf_counter() - started}, "probe", name)
        log(f"probe {name}: linear {100 * result['linear_top1']:.1f}%, k-NN {100 * result['knn_top1']:.1f}%")


def trained_steps(run_dir: Path) -> int | None:
    """Optimizer steps a training run has logged (its last record)."""
    records = read_records(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    return records[-1]["step"] if records else None


def saved_evaluation(folder: Path) -> Path:
    """Where eval-autoencoder's metrics of an autoencoder folder (a run's out_dir/autoencoder) are kept."""
    return folder.parent / "eval" / METRICS_FILE


def reconstruction_row(folder: Path, metrics: dict, **fields) -> dict:
    """Reconstruction metrics of an autoencoder folder with its latent's shape [h, w, C], the steps its run
    trained (None without the run's log) and ``fields`` (``decodes``: "latent" or "transform", ...)."""
    autoencoder = load_autoencoder(folder)
    return {**metrics, "latent": [autoencoder.latent_size, autoencoder.latent_size, autoencoder.latent_channels],
            "steps": trained_steps(folder.parent), **fields}


def measure_reconstruction(args, results: Results) -> None:
    """Each arm's autoencoder: its saved eval-autoencoder metrics (evaluated now when missing) and, when the arm's
    DiT models fewer channels than the latent has (a PCA transform), the same through its transform; the
    ablation's variants from their saved evaluations (not rerun here)."""
    for arm in ARMS:
        folder = Path(arm_config(arm, args.out, 1).autoencoder)
        if results.get("reconstruction", arm) is None:
            if not saved_evaluation(folder).is_file():
                log(f"{arm}: evaluating the autoencoder's reconstructions (first {RECONSTRUCTION_IMAGES} test images)")
                eval_autoencoder(folder, limit=RECONSTRUCTION_IMAGES, out_dir=saved_evaluation(folder).parent,
                                 progress=True)
            metrics = json.loads(saved_evaluation(folder).read_text())
            results.put(reconstruction_row(folder, metrics, arm=arm, decodes="latent"), "reconstruction", arm)
        name = f"{arm} through its DiT's transform"
        if results.get("reconstruction", name) is not None:
            continue
        transform = dit_transform(arm, args)
        if transform.channels == transform.latent_channels:  # invertible: the latent's own row
            continue
        log(f"{arm}: evaluating the reconstructions through its DiT's {transform.kind} transform")
        metrics = eval_autoencoder(folder, limit=RECONSTRUCTION_IMAGES, progress=True, latent_transform=transform,
                                   out_dir=args.out / "reconstruction" / slug(name))
        results.put(reconstruction_row(folder, metrics, arm=arm, decodes="transform", transform=transform.kind,
                                       modelled_channels=transform.channels), "reconstruction", name)
    for label, variant in ABLATION_VARIANTS.items():
        folder = ABLATION / variant / "autoencoder"
        if saved_evaluation(folder).is_file():
            metrics = json.loads(saved_evaluation(folder).read_text())
            results.put(reconstruction_row(folder, metrics, decodes="latent"), "reconstruction", f"ablation: {label}")


def sampled_arms(stage: str, args) -> list[str]:
    """The arms whose DiT a sampling stage measures: ``--arms``, or the variants and the main arms they change
    (sampled at ``--matched-at`` when a variant changes the training shift)."""
    if stage != "variants":
        return list(args.arms)
    names = [name for name, *_ in args.variant]
    return list(dict.fromkeys(names + [VARIANTS[name]["base"] for name in names]))


def stage_arms(stages: list[str], args) -> list[str]:
    """The main arms whose autoencoder, latent cache and DiT run the stages use."""
    used = set()
    if {"fid", "sampling", "diagnosis"} & set(stages):
        used.update(args.arms)
    if "variants" in stages:
        used.update(VARIANTS[name]["base"] for name, *_ in args.variant)
    if {"probe", "reconstruction"} & set(stages):
        used.update(ARMS)
    return [arm for arm in ARMS if arm in used]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduction"), help="DiT runs and results.json")
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 2000, 4000, 8000], help="DiT steps with an FID")
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--sampling-at", type=int, default=None,
                        help="DiT step of the sampling-steps sweep (default: the last of --steps)")
    parser.add_argument("--samples", type=int, default=2000, help="generated images per FID")
    parser.add_argument("--reference", type=int, default=2000, help="first N test images as the FID reference")
    parser.add_argument("--diagnosis-at", type=int, nargs="+", default=None,
                        help="DiT steps of the diagnosis stage's latent fit (default: --steps)")
    parser.add_argument("--other-decoder", nargs=2, action="append", default=[], metavar=("ARM", "FOLDER"),
                        help="diagnosis: also decode the arm's samples with this autoencoder folder (same latent, "
                             "another decoder); repeat for more")
    parser.add_argument("--probe-train", type=int, default=5000)
    parser.add_argument("--probe-test", type=int, default=5000)
    parser.add_argument("--svg-checkpoints", type=Path, default=None,
                        help="a run of the SVG arm's recipe (out_dir or checkpoints/) to borrow checkpoints from")
    for arm, definition in ARMS.items():  # --svg-config, --vae-config, --vae16-config
        parser.add_argument(f"--{arm.lower().replace('-', '')}-config", dest=f"{slug(arm)}_config", type=Path,
                            default=definition.config, help=f"the {arm} arm's diffusion config")
    parser.add_argument("--matched-at", type=int, default=None,
                        help="variants: DiT step of the FIDs at sampling shift = training shift (default: the last of --steps)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="main arms to measure in the fid, diagnosis and sampling stages (e.g. one per process)")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME BASE KEY=VALUE",
                        help=f"a variant arm for the 'variants' stage: a main arm ({', '.join(ARMS)}) with config "
                             "overrides; repeat for more")
    parser.add_argument("--only", nargs="+", choices=["reconstruction", "fid", "diagnosis", "probe", "sampling", "variants", "docs"],
                        default=["fid", "diagnosis", "reconstruction", "probe", "sampling", "variants"])
    parser.add_argument("--docs", action="store_true", help="write the tables and plots into docs/results.md")
    args = parser.parse_args()
    args.steps = sorted(args.steps)
    args.sampling_at = args.sampling_at or args.steps[-1]
    args.matched_at = args.matched_at or args.steps[-1]
    args.diagnosis_at = sorted(args.diagnosis_at or args.steps)
    ARMS.update({arm: replace(definition, config=getattr(args, f"{slug(arm)}_config")) for arm, definition in ARMS.items()})
    results = open_results(args.out / "results.json")
    VARIANTS.update(results.get("variants") or {})
    for name, base, *overrides in args.variant:
        variant = {"base": base, "overrides": overrides}
        if base not in ARMS or not overrides or not all("=" in o for o in overrides):
            parser.error(f"--variant {name}: expected NAME BASE KEY=VALUE..., with BASE one of {', '.join(ARMS)}")
        if VARIANTS.get(name, variant) != variant or name in ARMS:
            parser.error(f"--variant {name}: the name is taken by another recipe ({VARIANTS.get(name, 'a main arm')})")
        VARIANTS[name] = variant
        arm_config(name, args.out, 1)  # a bad key or value fails now, not after hours
    for arm, folder in args.other_decoder:
        if arm not in ARMS:
            parser.error(f"--other-decoder {arm} {folder}: ARM must be one of {', '.join(ARMS)}")

    stages = [stage for stage in ("fid", "diagnosis", "reconstruction", "probe", "sampling", "variants") if stage in args.only]  # by priority
    if "variants" in stages and not args.variant:
        stages.remove("variants")
    arms = stage_arms(stages, args)
    for arm in arms:  # before anything runs: a missing autoencoder is one line, not a traceback hours later
        require_autoencoder(arm)
    args.svg_run = borrowed_run(args.svg_checkpoints, arm_config("SVG", args.out, 1)) if "SVG" in arms else None
    if stages:
        results.put(RESULTS_VERSION, "version")
        for key, value in {"machine": f"{platform.machine()} CPU, torch {torch.__version__}",
                           "samples": args.samples, "reference": args.reference}.items():
            results.put(value, "setting", key)
        for stage in stages:  # stages may run in different processes with different thread counts
            results.put(torch.get_num_threads(), "setting", "threads", stage)
        for arm in arms:
            ensure_latent_cache(arm, args.out)
            if results.get("arms", arm) is None:
                results.put(describe_arm(arm, args), "arms", arm)
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
            {"fid": measure_fid_vs_steps, "diagnosis": measure_diagnosis, "sampling": measure_fid_vs_sampling,
             "variants": measure_variants}[stage](args, results, fid)
            if stage == "fid":
                draw_preview_grids(args, results)
        results.add(time.perf_counter() - started, "wall_s", "stages", stage)
        if args.docs:
            write_docs(results, args)
    if args.docs and not stages:
        write_docs(results, args)


if __name__ == "__main__":
    main()
