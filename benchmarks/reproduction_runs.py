"""The arms and DiT runs of the small-scale reproduction (benchmarks/reproduction.py): each arm's config and what it
is, its checkpoints (borrowed from a run made elsewhere, already trained, or trained now), the pipeline of a
checkpoint, the latent transform its DiT models, and the version of the results file."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from svg_diffusion.autoencoder import Autoencoder, KLAutoencoder, load_autoencoder
from svg_diffusion.config import load_config, to_dict
from svg_diffusion.diffusion.latent_transform import LatentTransform
from svg_diffusion.errors import SVGError
from svg_diffusion.export import RUN_CONFIG, checkpoint_pipeline, same_latent
from svg_diffusion.trainers.diffusion import (
    DiffusionTrainConfig, cache_training_latents, train_diffusion, training_dataset, training_transform,
)
from svg_diffusion.training import checkpoint_path, load_checkpoint
from svg_diffusion.training.checkpoint import CHECKPOINT_DIR, list_checkpoints
from svg_diffusion.utils.shipped import shipped_pipeline

from reporting import REPO, Results


@dataclass(frozen=True)
class Arm:
    """A main arm: its DiT config (``--<arm>-config``) and the commands that make the autoencoder folder the
    config's ``autoencoder`` names. What the arm is (its latent, what its DiT models) is read from these."""

    config: Path
    autoencoder_made_by: str


ARMS = {
    "SVG": Arm(REPO / "configs/demo/diffusion.yaml",
               # The demo v1 autoencoder of configs/demo/autoencoder.yaml: the VAEs' decoders are not fine-tuned
               # either, so the v2 decoder (demo-pipeline, runs/demo/decoder_finetune) would favour this arm.
               "mkdir -p runs/demo/autoencoder && cp -r runs/demo/autoencoder_v1 runs/demo/autoencoder/autoencoder"),
    "VAE": Arm(REPO / "configs/demo/vae_diffusion.yaml",
               "svg-diffusion train-autoencoder --config configs/demo/vae.yaml --resume"),
    "VAE-16": Arm(REPO / "configs/demo/vae16_diffusion.yaml",
                  "svg-diffusion train-autoencoder --config configs/demo/vae16.yaml --resume"),
}
VARIANTS: dict[str, dict] = {}  # name -> {"base": main arm, "overrides": ["key=value", ...]} (--variant)
# Engine settings that may differ between a borrowed checkpoint's run and ours without changing training.
FREE_ENGINE_KEYS = {"out_dir", "max_steps", "keep_last_checkpoints", "log_every", "sample_every", "checkpoint_every"}
# 2: three arms; probe and reconstruction rows say which latent they measure (the autoencoder's, or through the
# arm's latent transform: what its DiT models), FID rows which checkpoint they sampled.
RESULTS_VERSION = 2
MILESTONES = "milestones"  # in a DiT run: hard links of its checkpoints at the measured steps


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def slug(arm: str) -> str:
    """An arm's name in file names: svg, vae, vae_16, svg_shift_3."""
    return re.sub(r"[^a-z0-9]+", "_", arm.lower())


def shown(path: str | Path) -> str:
    """A path as the results and the docs show it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def open_results(path: Path) -> Results:
    """The results file of ``--out``; SystemExit when it holds results of an earlier version of this script."""
    results = Results(path)
    found = results.get("version")
    if results.data and found != RESULTS_VERSION:
        raise SystemExit(f"{path} holds results of version {found or 1} of this script (1: the two-arm run, whose "
                         f"rows do not say which latent they measure); it writes version {RESULTS_VERSION}: give "
                         "another --out")
    return results


def run_dir(arm: str, out: Path) -> Path:
    return out / f"{slug(arm)}_dit"


def grid_path(arm: str, step: int, out: Path) -> Path:
    """The preview grid the script draws of an arm's DiT at ``step`` (decoded with the arm's autoencoder)."""
    return out / "grids" / f"{slug(arm)}_step_{step:08d}.png"


def arm_config(arm: str, out: Path, max_steps: int, run: Path | None = None) -> DiffusionTrainConfig:
    """The DiT config of a main arm or variant, its run in ``run`` (default: its folder under ``out``)."""
    overrides = [f"engine.out_dir={run or run_dir(arm, out)}", f"engine.max_steps={max_steps}",
                 "engine.keep_last_checkpoints=3"]
    if arm in VARIANTS:
        return load_config(DiffusionTrainConfig, ARMS[VARIANTS[arm]["base"]].config, overrides + VARIANTS[arm]["overrides"])
    return load_config(DiffusionTrainConfig, ARMS[arm].config, overrides)


def require_autoencoder(arm: str) -> None:
    """Stop with one line when the autoencoder folder of a main arm's config is missing, saying how to make it."""
    config = load_config(DiffusionTrainConfig, ARMS[arm].config)
    if not Path(shipped_pipeline(config.autoencoder)).is_dir():
        raise SystemExit(f"{arm} arm: no autoencoder at {shown(config.autoencoder)} (named by "
                         f"{shown(ARMS[arm].config)}); make it with: {ARMS[arm].autoencoder_made_by}")


def recipe(config: dict) -> dict:
    """A diffusion config as a dict without the settings that do not change what is trained. The autoencoder is
    left out: what matters is the latent it encodes (:func:`borrowed_run` compares that), not its decoder."""
    kept = {key: value for key, value in config.items() if key != "autoencoder"}
    return {**kept, "engine": {k: v for k, v in config["engine"].items() if k not in FREE_ENGINE_KEYS}}


def borrowed_run(folder: Path | None, config: DiffusionTrainConfig) -> Path | None:
    """The run folder of ``--svg-checkpoints`` (its out_dir or its checkpoints/ folder), or None without one.

    SystemExit unless the run's config.yaml is ``config``'s recipe and the run's autoencoder encodes exactly as
    ``config``'s (the latent-cache fingerprint: every weight but the decoder's), so its checkpoints modelled the
    latent that ``config``'s autoencoder decodes here.
    """
    if folder is None:
        return None
    run = folder.parent if folder.name == CHECKPOINT_DIR and not (folder / RUN_CONFIG).is_file() else folder
    if not (run / RUN_CONFIG).is_file():
        raise SystemExit(f"--svg-checkpoints {folder}: not a training run's out_dir or its {CHECKPOINT_DIR}/ folder "
                         f"({RUN_CONFIG} is missing)")
    theirs = load_config(DiffusionTrainConfig, run / RUN_CONFIG)
    ours_recipe, their_recipe = recipe(to_dict(config)), recipe(to_dict(theirs))
    differ = [key for key in ours_recipe if their_recipe.get(key) != ours_recipe[key]]
    if differ:
        raise SystemExit(f"--svg-checkpoints {run}: trained with other settings ({', '.join(differ)}): not the recipe "
                         "of the SVG arm's config")
    try:
        same_latent(load_autoencoder(config.autoencoder), load_autoencoder(theirs.autoencoder),
                    shown(config.autoencoder), str(theirs.autoencoder))
    except SVGError as error:
        raise SystemExit(f"--svg-checkpoints {run}: {error}") from None
    return run


def borrowed_checkpoint(config: DiffusionTrainConfig, run: Path | None, step: int) -> Path | None:
    """The checkpoint at ``step`` of a :func:`borrowed_run`, when it is there and its engine settings are the
    recipe of ``config``."""
    if run is None or not checkpoint_path(run, step).is_file():
        return None
    path = checkpoint_path(run, step)
    ours = recipe(to_dict(config))["engine"]
    engine = recipe({"engine": load_checkpoint(path)["config"]})["engine"]
    differ = [f"engine.{key}" for key in ours if engine.get(key) != ours[key]]
    if differ:
        raise SystemExit(f"{path} was trained with other settings ({', '.join(differ)}): not the same recipe")
    return path


def dit_run(arm: str, args) -> Path:
    """The folder of the arm's DiT run: the borrowed one (SVG, with ``--svg-checkpoints``) or the script's own."""
    return args.svg_run if arm == "SVG" and args.svg_run is not None else run_dir(arm, args.out)


def milestone_path(run: Path, step: int) -> Path:
    """Where the script keeps a hard link of a run's checkpoint at a measured step: the engine prunes all but its
    last few checkpoints, and later stages (diagnosis, sampling) need the one of each step."""
    return Path(run) / MILESTONES / checkpoint_path(run, step).name


def start_from_borrowed(config: DiffusionTrainConfig, run: Path | None, step: int) -> None:
    """Before the arm trains to ``step`` itself: when the borrowed run has a checkpoint before ``step`` that is
    later than the arm's own latest, hard-link it into the arm's run, so training resumes from it (the same
    recipe, checked by :func:`borrowed_checkpoint`) instead of from an earlier step or from scratch."""
    if run is None:
        return
    own = [s for s, _ in list_checkpoints(config.engine.out_dir)]
    earlier = [s for s, _ in list_checkpoints(run) if (own[-1] if own else 0) < s < step]
    if earlier and (source := borrowed_checkpoint(config, run, earlier[-1])) is not None:
        target = checkpoint_path(config.engine.out_dir, earlier[-1])
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
        log(f"training resumes from the borrowed {shown(source)}")


def checkpoint_at(arm: str, step: int, args, results: Results, train: bool = True) -> Path | None:
    """The arm's DiT checkpoint after ``step`` steps: borrowed (SVG), kept from an earlier stage, already
    trained, or trained now (and then kept: :func:`milestone_path`); with ``train=False`` None instead of
    training."""
    config = arm_config(arm, args.out, step)
    borrowed = borrowed_checkpoint(config, args.svg_run, step) if arm == "SVG" else None
    if borrowed is not None:
        return borrowed
    run = Path(config.engine.out_dir)
    kept, own = milestone_path(run, step), checkpoint_path(run, step)
    if kept.is_file():
        return kept
    if not own.is_file():
        if not train:
            return None
        later = [s for s, _ in list_checkpoints(run) if s > step]
        if later:
            raise SystemExit(f"{arm}: the checkpoint of step {step} is gone from {shown(run)} (pruned before this "
                             f"script kept it in {MILESTONES}/); its run is at step {later[-1]}")
        start_from_borrowed(config, args.svg_run if arm == "SVG" else None, step)
        log(f"{arm}: training the DiT to step {step} in {config.engine.out_dir}")
        started = time.perf_counter()
        train_diffusion(config, resume=True)
        if not own.is_file():  # the engine saves and returns on SIGINT/SIGTERM
            raise SystemExit(f"{arm}: training stopped before step {step}; run the script again to continue")
        results.put(time.perf_counter() - started, "wall_s", "dit_training", arm, str(step))
    kept.parent.mkdir(exist_ok=True)
    try:
        os.link(own, kept)
    except FileExistsError:  # another process of the script (one per core) kept it first
        pass
    return kept


def pipeline_at(arm: str, checkpoint: Path, args, autoencoder: Autoencoder | None = None):
    """The EMA pipeline of a DiT checkpoint (with the checkpoint's latent transform and the arm's autoencoder, or
    ``autoencoder``)."""
    return checkpoint_pipeline(arm_config(arm, args.out, 1), load_checkpoint(checkpoint), autoencoder)


def ensure_latent_cache(arm: str, out: Path) -> None:
    """Encode the training latents of an arm (main or variant) into its config's cache, unless they are there."""
    config = arm_config(arm, out, 1)
    if not (Path(config.latent_cache) / "index.json").is_file():
        log(f"{arm}: caching the latents into {config.latent_cache}")
        cache_training_latents(config)


def dit_transform(arm: str, args, autoencoder: Autoencoder | None = None) -> LatentTransform:
    """The latent transform the arm's DiT models, through the trainer's own code: the one its run saved (the
    borrowed SVG run's, or the script's run's), or before the run has started the one its training will fit over
    the arm's latent cache. ``autoencoder``: the arm's, when the caller has it loaded."""
    config = arm_config(arm, args.out, 1, run=dit_run(arm, args))
    autoencoder = autoencoder if autoencoder is not None else load_autoencoder(config.autoencoder)
    return training_transform(config, autoencoder, training_dataset(config, autoencoder, progress=False),
                              resume=True, progress=False)


def describe_arm(arm: str, args) -> dict:
    """What a main arm is, for the report: its configs, its autoencoder and latent [h, w, C], and what its DiT
    models of the latent (the transform's kind and [h, w, k])."""
    config = arm_config(arm, args.out, 1)
    autoencoder = load_autoencoder(config.autoencoder)
    transform = dit_transform(arm, args, autoencoder)
    size = autoencoder.latent_size
    described = {"config": shown(ARMS[arm].config), "autoencoder": shown(config.autoencoder),
                 "autoencoder_kind": autoencoder_kind(autoencoder), "latent": [size, size, autoencoder.latent_channels],
                 "transform": transform.kind, "modelled": [size, size, transform.channels],
                 "autoencoder_made_by": ARMS[arm].autoencoder_made_by}
    if transform.kind == "pca":
        described["explained_variance"] = transform.explained_variance
    return described


def autoencoder_kind(autoencoder) -> str:
    """An autoencoder in a few words, from its config."""
    config = autoencoder.config
    if isinstance(autoencoder, KLAutoencoder):
        return f"KL-regularized conv autoencoder (VAE), KL weight {config.kl_weight:g}"
    residual = f" + {config.residual.channels}-channel residual" if config.residual.channels else ""
    return f"SVG: frozen {config.encoder} encoder ({autoencoder.encoder.embed_dim} channels){residual}"
