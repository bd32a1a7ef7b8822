"""The DiT runs of the small-scale reproduction (benchmarks/reproduction.py): each arm's config, its checkpoints
(borrowed from a run made elsewhere, already trained, or trained now) and the pipeline of a checkpoint."""

from __future__ import annotations

import re
import time
from pathlib import Path

from svg_diffusion.config import load_config, to_dict
from svg_diffusion.export import checkpoint_pipeline
from svg_diffusion.trainers.diffusion import DiffusionTrainConfig, cache_training_latents, train_diffusion
from svg_diffusion.training import checkpoint_path, load_checkpoint

from reporting import REPO, Results

ARMS = {"SVG": REPO / "configs/demo/diffusion.yaml", "VAE": REPO / "configs/demo/vae_diffusion.yaml",
        "VAE-16": REPO / "configs/demo/vae16_diffusion.yaml"}  # --svg/--vae/--vae16-config
VAE_ARMS = ("VAE", "VAE-16")  # the arms whose autoencoder is a VAE trained for the reproduction (8x8x4, 8x8x16)
VARIANTS: dict[str, dict] = {}  # name -> {"base": main arm, "overrides": ["key=value", ...]} (--variant)
# Engine settings that may differ between a borrowed checkpoint's run and ours without changing training.
FREE_ENGINE_KEYS = {"out_dir", "max_steps", "keep_last_checkpoints", "log_every", "sample_every", "checkpoint_every"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def slug(arm: str) -> str:
    """An arm's name in file names: svg, vae, vae_16, svg_shift_3."""
    return re.sub(r"[^a-z0-9]+", "_", arm.lower())


def run_dir(arm: str, out: Path) -> Path:
    return out / f"{slug(arm)}_dit"


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
    """The EMA pipeline of a DiT checkpoint (with the checkpoint's latent transform)."""
    return checkpoint_pipeline(arm_config(arm, args.out, 1), load_checkpoint(checkpoint))


def ensure_latent_cache(arm: str, out: Path) -> None:
    """Encode the training latents of an arm (main or variant) into its config's cache, unless they are there."""
    config = arm_config(arm, out, 1)
    if not (Path(config.latent_cache) / "index.json").is_file():
        log(f"{arm}: caching the latents into {config.latent_cache}")
        cache_training_latents(config)
