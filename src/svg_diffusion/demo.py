"""The README's main job on the embedded default: a class-conditional Fashion-MNIST grid from the shipped pipeline.

    from svg_diffusion.demo import run_demo
    run_demo("outputs/demo")        # -> outputs/demo/demo_grid.png: one labelled row per class

The shipped pipeline (``demo-pipeline``: ``assets/demo_pipeline``, docs/demo.md) was trained with this project's
own commands (``scripts/reproduce_demo.sh``): pretrain-encoder -> train-autoencoder -> cache-latents -> train.
Its trained weights are stored as float16 (loaded as float32) and its autoencoder refers to the shipped demo
encoder (``demo-pretrained``: ``assets/demo_encoder``, also what ``encode`` and ``evaluate fd-encoder`` use by
default) instead of holding a second copy. ``SHA256SUMS`` in the pipeline folder lists the hash of every file
the pipeline loads. The names are ``svg_diffusion.utils.shipped``'s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import torch

from .errors import SVGError
from .autoencoder.model import ENCODER_FOLDER
from .pipeline import AUTOENCODER_FOLDER, INDEX_FILE, TRANSFORMER_FOLDER, SVGPipeline
from .sample_writer import class_labels, write_samples
from .utils.checks import check_int
from .utils.files import atomic_path
from .utils.pretrained import CONFIG_FILE, WEIGHTS_FILE, read_json
from .utils.shipped import DEMO_ENCODER_DIR, DEMO_PIPELINE_DIR, shipped_pipeline

CHECKSUMS_FILE = "SHA256SUMS"
GRID_FILE = "demo_grid.png"
GRID_PER_CLASS = 8  # the grid's default samples per class: 80 images, one row per Fashion-MNIST class
STORAGE_DTYPE = torch.float16  # halves the files; sampling from it matches float32 weights (docs/demo.md)


def demo_pipeline(folder: str | Path = DEMO_PIPELINE_DIR) -> SVGPipeline:
    """The shipped demo pipeline (or the pipeline folder or shipped name ``folder``), on the CPU."""
    folder = shipped_pipeline(folder)
    if not (Path(folder) / INDEX_FILE).is_file():
        raise SVGError(f"no demo pipeline in {folder}: run scripts/reproduce_demo.sh to train and export one")
    return SVGPipeline.from_pretrained(folder)


def run_demo(out_dir: str | Path = "outputs/demo", steps: int | None = None, seed: int = 0,
             per_class: int = GRID_PER_CLASS,
             pipeline: str | Path | SVGPipeline = DEMO_PIPELINE_DIR, progress: bool = True) -> Path:
    """Sample ``per_class`` images of every class with the pipeline's sampler and guidance (``steps``: its
    default when None; a few steps take its few-step sampler when it has one, :class:`.FewStepDefaults`);
    write them as a grid, one row per class labelled with its name; return the PNG's path.

    ``pipeline``: a pipeline folder (default: the shipped one) or a loaded ``SVGPipeline``. Sample ``i``
    starts from noise seeded by ``(seed, i)`` (see ``sample_writer``): the same seed gives the same grid.
    """
    check_int("per_class", per_class, at_least=1)
    if steps is not None:  # None: the pipeline's
        check_int("steps", steps, at_least=1)
    start = time.perf_counter()
    pipe = pipeline if isinstance(pipeline, SVGPipeline) else demo_pipeline(pipeline)
    loaded = time.perf_counter()
    labels = class_labels(pipe, per_class=per_class)
    grid = write_samples(pipe, labels, grid=Path(out_dir) / GRID_FILE, nrow=per_class, seed=seed,
                         batch_size=len(labels), progress=progress, num_steps=steps)
    done = time.perf_counter()
    used = pipe.sampling_settings(steps)
    print(f"{len(labels)} samples ({per_class} per class, {used.num_steps} {used.sampler} steps, "
          f"guidance {used.guidance.scale:g}, seed {seed}) in {done - loaded:.1f} s "
          f"(loading {loaded - start:.1f} s, {torch.get_num_threads()} threads)")
    return grid


# ---------------------------------------------------------------------------------------------- shipping


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_files(folder: str | Path = DEMO_PIPELINE_DIR) -> list[Path]:
    """Every file the pipeline in ``folder`` loads, its shared encoder's included, relative to ``folder``."""
    folder = Path(folder)
    files = [path.relative_to(folder) for path in sorted(folder.rglob("*"))
             if path.is_file() and path.name != CHECKSUMS_FILE]
    # The autoencoder's encoder may live outside the folder (export_demo_pipeline shares the demo encoder).
    shared = read_json(folder / AUTOENCODER_FOLDER / CONFIG_FILE).get("encoder_folder")
    if shared is not None:
        encoder = Path(os.path.normpath(Path(AUTOENCODER_FOLDER) / shared))
        files += [encoder / name for name in (CONFIG_FILE, WEIGHTS_FILE)]
    return files


def read_checksums(folder: str | Path = DEMO_PIPELINE_DIR) -> dict[str, str]:
    """``{relative path: sha256}`` as listed in ``folder/SHA256SUMS`` (the ``sha256sum`` format)."""
    path = Path(folder) / CHECKSUMS_FILE
    if not path.is_file():
        raise SVGError(f"{path} is missing")
    entries = {}
    for line in path.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        entries[name.lstrip("*")] = digest
    return entries


def write_checksums(folder: str | Path = DEMO_PIPELINE_DIR) -> Path:
    """Write ``folder/SHA256SUMS``: ``sha256sum -c SHA256SUMS`` run in ``folder`` checks every file loaded."""
    folder = Path(folder)
    lines = [f"{sha256(folder / name)}  {name.as_posix()}\n" for name in shipped_files(folder)]
    with atomic_path(folder / CHECKSUMS_FILE) as tmp:
        tmp.write_text("".join(lines))
    return folder / CHECKSUMS_FILE


def export_demo_pipeline(source: str | Path, folder: str | Path = DEMO_PIPELINE_DIR,
                         encoder_folder: str | Path = DEMO_ENCODER_DIR,
                         parameter_dtype: torch.dtype | None = STORAGE_DTYPE) -> Path:
    """Copy the trained pipeline ``source`` to ``folder`` for shipping: parameters stored as ``parameter_dtype``,
    the autoencoder referring to ``encoder_folder`` (which must hold its very encoder), and ``SHA256SUMS``."""
    pipe = SVGPipeline.from_pretrained(source)
    if pipe.transformer is None:
        raise SVGError(f"{source} holds only an autoencoder: the demo needs a pipeline that samples")
    folder = Path(folder)
    # Written beside the target, then swapped in: no stale file of an older export survives, and the
    # encoder reference (relative to the folder's parent) stays the same.
    staging = folder.with_name(folder.name + ".export")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    # The weights again in their shipping form, over the plain copy: stored at parameter_dtype, the
    # autoencoder's encoder a reference instead of a copy.
    pipe.transformer.save_pretrained(staging / TRANSFORMER_FOLDER, parameter_dtype)
    pipe.autoencoder.save_pretrained(staging / AUTOENCODER_FOLDER, parameter_dtype, encoder_folder)
    shutil.rmtree(staging / AUTOENCODER_FOLDER / ENCODER_FOLDER)
    write_checksums(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder
