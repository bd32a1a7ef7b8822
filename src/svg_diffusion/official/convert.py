"""``svg-diffusion convert-official``: the public files read into one of our pipeline folders."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..diffusion.latents import LatentStatistics
from ..errors import SVGError
from ..pipeline import SVGPipeline
from .autoencoder import autoencoder_from_public
from .latent_stats import read_public_stats
from .transformer import transformer_from_public


def convert_official(autoencoder: str | Path, autoencoder_config: str | Path, out: str | Path,
                     dinov3: str | Path | None = None, transformer: str | Path | None = None,
                     transformer_config: str | Path | None = None, stats: str | Path | None = None,
                     trust_pickle: bool = False) -> Path:
    """Convert the public SVG files into one pipeline folder ``out`` and return its path.

    ``autoencoder`` + ``autoencoder_config``: the Lightning checkpoint and its YAML (required). ``dinov3``:
    Meta's DINOv3 ``.pth`` (or a Hugging Face folder); needed when the checkpoint has no ``encoder.*``
    copy, and checked against it otherwise. ``transformer`` (+ optional ``transformer_config``) and
    ``stats``: the diffusion model and ``dinov3_sp_stats.pt``; without them the folder is an
    autoencoder-only pipeline. ``out`` must not exist or be empty; it appears complete or not at all.
    ``trust_pickle``: also load public files that hold other pickled objects than tensors (e.g. a Lightning
    checkpoint's hyper-parameters), which runs code from them: only for files from a source you trust.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SVGError(f"output folder {out} already exists and is not empty")
    if transformer is None and (transformer_config is not None or stats is not None):
        raise SVGError("--transformer-config and --stats belong to a transformer: pass --transformer too")

    ae = autoencoder_from_public(autoencoder, autoencoder_config, dinov3, trust_pickle)
    dit = latent_stats = None
    if transformer is not None:
        dit, feature_norm = transformer_from_public(transformer, transformer_config, trust_pickle)
        if feature_norm is None:  # no YAML: statistics given means the model was trained on normalized latents
            feature_norm = stats is not None
        if feature_norm and stats is None:
            raise SVGError(f"{transformer_config} trains on normalized latents (basic.feature_norm): pass --stats")
        if feature_norm:
            latent_stats = read_public_stats(stats, ae.latent_channels, trust_pickle)
        else:
            if stats is not None:
                warnings.warn(f"{transformer_config} has basic.feature_norm false: {stats} is not used", stacklevel=2)
            latent_stats = LatentStatistics(torch.zeros(ae.latent_channels), torch.ones(ae.latent_channels))
    pipeline = SVGPipeline(ae, dit, latent_stats)

    # Written beside ``out`` and renamed into place, so an interrupted conversion leaves no half folder.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the pipeline folder gets the usual permissions
    try:
        pipeline.save_pretrained(staging)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
