"""A diffusion run that starts from a trained pipeline (``init_from``): checked, then its transformer and transform.

The pipeline's transformer was trained on the latents of one autoencoder in the coordinates of one latent
transform, so a run may start from it only on the same latents: its autoencoder must make the run's latents
(the same fingerprint, which leaves the decoder out), its class names must be the data's, and the run models
the pipeline's own latent transform (``latent_stats`` and ``latent_transform.path`` stay unset; the kind and
size the config asks for are checked). Its transformer must have the run's architecture, except that a
MeanFlow run adds the interval (and guidance) inputs to a flow-matching transformer: the warm start
(:func:`~svg_diffusion.diffusion.transformer.warm_start_mean_flow`), which at r = t computes exactly what the
pipeline's transformer computes. A flow-matching run continues training the transformer as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path

from ..autoencoder import Autoencoder
from ..diffusion.latent_transform import LatentTransform, LatentTransformConfig, check_transform
from ..diffusion.latents import autoencoder_fingerprint
from ..diffusion.transformer import DiT, DiTConfig, warm_start_mean_flow
from ..errors import SVGError
from ..pipeline import TRANSFORMER_FOLDER, SVGPipeline
from ..utils.pretrained import WEIGHTS_FILE
from ..utils.shipped import shipped_pipeline

# The inputs a warm start adds to a flow-matching transformer; it never removes them.
MEAN_FLOW_INPUTS = ("interval_input", "guidance_input")


def load_start_pipeline(folder: str | Path, autoencoder: Autoencoder, class_names: list[str]) -> SVGPipeline:
    """The pipeline ``folder`` (on the CPU) after checking that it samples and models the run's latents and classes."""
    pipe = SVGPipeline.from_pretrained(folder)
    where = f"init_from {folder}"
    if pipe.transformer is None:
        raise SVGError(f"{where} holds only an autoencoder: a run starts from a pipeline with a transformer")
    if autoencoder_fingerprint(pipe.autoencoder) != autoencoder_fingerprint(autoencoder):
        raise SVGError(f"{where}: its autoencoder makes other latents than the run's (config key autoencoder)")
    if (pipe.class_names or []) != class_names:
        raise SVGError(f"{where} was trained on the classes {pipe.class_names}, the data has {class_names or None}")
    return pipe


def start_transform(pipe: SVGPipeline, settings: LatentTransformConfig, folder: str | Path) -> LatentTransform:
    """The pipeline's latent transform, if it is of the kind and size ``settings`` asks for."""
    return check_transform(pipe.latent_transform, settings, pipe.autoencoder.latent_channels, f"init_from {folder}")


def start_transformer(source: DiT, config: DiTConfig, folder: str | Path) -> DiT:
    """A new transformer of the run's ``config`` holding ``source``'s weights (``source`` stays as it is: it may
    be the teacher). The MeanFlow inputs a warm start adds output zero at first; call it under the run's seed,
    as their other weights are drawn."""
    differences = [f"{field.name} ({getattr(source.config, field.name)} there, {getattr(config, field.name)} here)"
                   for field in dataclasses.fields(DiTConfig)
                   if getattr(source.config, field.name) != getattr(config, field.name)
                   and not (field.name in MEAN_FLOW_INPUTS and getattr(config, field.name))]
    if differences:
        raise SVGError(f"init_from {folder}: its transformer differs from the run's in {', '.join(differences)}")
    if config.interval_input:
        return warm_start_mean_flow(source, guidance_input=config.guidance_input)
    return copy.deepcopy(source)


def weights_digest(folder: str | Path) -> str:
    """SHA-256 of the transformer weights file of the pipeline ``folder`` (or shipped pipeline name): a resumed
    run checks that its teacher, read again from ``init_from`` rather than kept in checkpoints, is the one it
    was trained with."""
    with open(Path(shipped_pipeline(folder)) / TRANSFORMER_FOLDER / WEIGHTS_FILE, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
