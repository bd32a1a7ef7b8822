"""A model folder from a training run's checkpoint: what a stopped (or still running) run has learned so far.

A run writes its model folder when it reaches ``max_steps``; a run stopped earlier, or one still going, has only
checkpoints. ``export_run`` reads the run's ``config.yaml`` and one of its checkpoints (the latest by default) and
writes the folder the run would have written had it ended at that step:

- a diffusion run (``train``): the pipeline of its EMA transformer with its latent transform;
- an autoencoder run (``train-autoencoder``): the autoencoder.

A diffusion pipeline can take another autoencoder than the one it was trained with, as long as its latent is the
same: a decoder fine-tuned afterwards with ``train_parts: decoder`` (docs/autoencoder.md). The latents' sameness
is checked by the fingerprint that latent caches use (every weight but the decoder's).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .autoencoder import Autoencoder, build_autoencoder, load_autoencoder
from .config import load_config
from .diffusion.latents import autoencoder_fingerprint
from .diffusion.transformer import DiT
from .errors import SVGError
from .pipeline import SVGPipeline
from .training import derive_seed, list_checkpoints, load_checkpoint

RUN_CONFIG = "config.yaml"


def run_checkpoint(run_dir: str | Path, step: int | None = None) -> Path:
    """The checkpoint of ``run_dir`` at ``step`` (default: the latest); SVGError naming the steps there are."""
    found = dict(list_checkpoints(run_dir))
    if not found:
        raise SVGError(f"{run_dir} has no checkpoints (a run's out_dir holds checkpoints/step_*.pt)")
    if step is None:
        return found[max(found)]
    if step not in found:
        raise SVGError(f"{run_dir} has no checkpoint of step {step}; it has steps {sorted(found)}")
    return found[step]


def same_latent(autoencoder: Autoencoder, trained_with: Autoencoder, name: str, trained_name: str) -> None:
    """SVGError unless ``autoencoder`` encodes exactly as ``trained_with`` (only their decoders may differ)."""
    if autoencoder_fingerprint(autoencoder) != autoencoder_fingerprint(trained_with):
        raise SVGError(f"autoencoder {name} does not encode as {trained_name}, which the run was trained on: only "
                       "a decoder fine-tuned on the same latent (train_parts: decoder) can replace it")


def checkpoint_pipeline(config, state: dict, autoencoder: Autoencoder | None = None) -> SVGPipeline:
    """The pipeline of the EMA transformer in a diffusion checkpoint's ``state`` (a run of ``config``, a
    ``DiffusionTrainConfig``), with the checkpoint's latent transform and ``autoencoder`` (default: the run's)."""
    from .trainers.diffusion import checkpoint_transform, dataset_classes, training_dataset, transformer_config

    autoencoder = autoencoder if autoencoder is not None else load_autoencoder(config.autoencoder)
    trainer_state = state["trainer"]
    transform = checkpoint_transform(trainer_state)
    # Checkpoints written before they held the class names: the training data's (the run's cache or dataset;
    # a cache accepts any autoencoder of its latent).
    class_names = trainer_state.get("class_names")
    if class_names is None:
        class_names = dataset_classes(training_dataset(config, autoencoder, progress=False))
    transformer = DiT(transformer_config(config, autoencoder.latent_size, transform.channels, len(class_names)))
    transformer.load_state_dict(trainer_state["ema"]["shadow"])
    return SVGPipeline(autoencoder, transformer.eval(), transform, class_names or None, config.sampling)


def export_diffusion_run(run_dir: Path, state: dict, out: Path, autoencoder: str | Path | None = None) -> Path:
    """The EMA pipeline of a diffusion run's checkpoint ``state``, saved to ``out``; see the module docstring."""
    from .trainers.diffusion import DiffusionTrainConfig

    config = load_config(DiffusionTrainConfig, run_dir / RUN_CONFIG)
    model = None
    if autoencoder is not None:
        model = load_autoencoder(autoencoder)
        same_latent(model, load_autoencoder(config.autoencoder), str(autoencoder), str(config.autoencoder))
    return checkpoint_pipeline(config, state, model).save_pretrained(out)


def export_autoencoder_run(run_dir: Path, state: dict, out: Path) -> Path:
    """The autoencoder of an autoencoder run's checkpoint ``state``, saved to ``out``."""
    from .trainers.autoencoder import AutoencoderTrainConfig, TrainedParts, load_trained_weights

    config = load_config(AutoencoderTrainConfig, run_dir / RUN_CONFIG)
    # Seeded as the engine seeds the run's initialization: a frozen encoder without pretrained weights (a random
    # architecture, as in tests) comes out as the one the run trained on.
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(config.engine.seed, "init"))
        model = build_autoencoder(config.model)
    if config.init_from is not None:  # the frozen parts a decoder-only run did not checkpoint
        load_trained_weights(model, config.init_from)
    TrainedParts(model, config.train_parts == "decoder").load_state_dict(state["modules"]["autoencoder"])
    model.eval().save_pretrained(out)
    return out


def export_run(run_dir: str | Path, out: str | Path, step: int | None = None,
               autoencoder: str | Path | None = None) -> Path:
    """Write the model folder of training run ``run_dir`` at checkpoint ``step`` (default: the latest) to ``out``:
    a pipeline for a diffusion run (``autoencoder``: another autoencoder of the same latent), an autoencoder for an
    autoencoder run. Returns ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / RUN_CONFIG).is_file():
        raise SVGError(f"{run_dir} is not a training run's out_dir: {RUN_CONFIG} is missing")
    path = run_checkpoint(run_dir, step)
    state = load_checkpoint(path)
    modules = set(state.get("modules", {}))
    if "transformer" in modules:
        return export_diffusion_run(run_dir, state, out, autoencoder)
    if "autoencoder" in modules:
        if autoencoder is not None:
            raise SVGError(f"{run_dir} is an autoencoder run: --autoencoder applies to diffusion runs only")
        return export_autoencoder_run(run_dir, state, out)
    raise SVGError(f"{path} holds modules {sorted(modules)}: not a diffusion or autoencoder run's checkpoint")
