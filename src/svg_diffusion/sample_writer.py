"""Many samples from a pipeline: class grids to look at, image folders and ``.npz`` files to evaluate.

    pipe = SVGPipeline.from_pretrained("runs/demo/diffusion/pipeline")
    labels = class_labels(pipe, classes=None, per_class=8)            # every class, 8 samples each
    write_samples(pipe, labels, grid="grid.png", nrow=8, seed=0)       # one labelled row per class
    write_samples(pipe, class_labels(pipe, num=50_000), npz="samples.npz", batch_size=256)

Sample ``i`` starts from its own noise, drawn from a generator seeded by ``(seed, i)``: the same sample
comes out whatever the batch size, and whatever the number of processes: under torchrun every rank
generates its ``shard_indices`` share (ODE samplers; the SDE sampler draws its per-step noise per batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .errors import SVGError
from .pipeline import SVGPipeline
from .training.distributed import all_gather_rows, barrier, rank_and_world_size
from .training.randomness import derive_seed
from .training.sharding import shard_indices
from .utils.checks import check_int
from .utils.files import atomic_path
from .utils.images import from_uint8, save_image_grid


def sample_noise(pipeline: SVGPipeline, indices: Sequence[int], seed: int) -> torch.Tensor:
    """Initial noise [len(indices), C, h, w] (CPU, float32) of the samples ``indices``, one generator per sample."""
    shape = pipeline.noise_shape(1)[1:]
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, "sample", i)))
                        for i in indices])


def class_labels(pipeline: SVGPipeline, classes: Sequence[int | str] | None = None, per_class: int = 1,
                 num: int | None = None) -> list[int]:
    """Class indices to sample: each of ``classes`` (indices or names; None: all) ``per_class`` times in a
    row, or with ``num``, ``num`` labels cycling through ``classes`` (balanced, for evaluation).
    An unconditional model has one "class", the null label 0.
    """
    model_classes = pipeline.transformer.config.num_classes if pipeline.transformer is not None else 0
    chosen = [pipeline.class_index(c) for c in classes] if classes else list(range(max(model_classes, 1)))
    if num is not None:
        check_int("num", num, at_least=1)
        return [chosen[i % len(chosen)] for i in range(num)]
    check_int("per_class", per_class, at_least=1)
    return [c for c in chosen for _ in range(per_class)]


def row_names(pipeline: SVGPipeline, labels: Sequence[int], per_row: int) -> list[str]:
    """The class name of each grid row (the label of its first sample)."""
    names = pipeline.class_names
    first = labels[::per_row]
    if pipeline.transformer is None or pipeline.transformer.config.num_classes == 0:
        return ["unconditional"] * len(first)
    return [names[label] if names else f"class {label}" for label in first]


@torch.no_grad()
def iter_samples(pipeline: SVGPipeline, labels: Sequence[int], indices: Sequence[int], seed: int = 0,
                 batch_size: int = 64, progress: bool = True, **call_options) -> Iterator[tuple[list[int], np.ndarray]]:
    """Generate samples ``indices`` (positions in ``labels``) in batches: yield (indices, uint8 [n, H, W, 3]).

    ``call_options`` go to the pipeline call (``num_steps``, ``guidance_scale``, ``sampler``, ``shift``,
    ``precision``, ...).
    """
    check_int("batch_size", batch_size, at_least=1)
    indices = list(indices)
    bar = tqdm(total=len(indices), desc="sampling", unit="img", disable=not progress)
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        noise = sample_noise(pipeline, batch, seed)
        images = pipeline([labels[i] for i in batch], latents=noise, output_type="np", **call_options)
        bar.update(len(batch))
        yield batch, images
    bar.close()


def write_samples(pipeline: SVGPipeline, labels: Sequence[int], *, grid: str | Path | None = None,
                  folder: str | Path | None = None, npz: str | Path | None = None, nrow: int = 8,
                  seed: int = 0, batch_size: int = 64, progress: bool = True, **call_options) -> Path:
    """Sample one image per label and write them to exactly one of:

    - ``grid``: a PNG with ``nrow`` images per row, each row labelled with its first sample's class name
      (lay labels out as :func:`class_labels` does, ``nrow`` = ``per_class``);
    - ``folder``: ``000000.png``, ``000001.png``, ... and ``labels.txt`` (one class index per line);
    - ``npz``: ``arr_0`` uint8 [N, H, W, 3] (the ADM/guided-diffusion layout FID tools read) and ``labels``.

    Under torch.distributed each rank samples its share; rank 0 writes the grid, the npz and labels.txt,
    every rank its own folder files. Returns the path written.
    """
    targets = [path for path in (grid, folder, npz) if path is not None]
    if len(targets) != 1:
        raise SVGError("choose exactly one output: a grid PNG, an image folder or an .npz file")
    if not labels:
        raise SVGError("nothing to sample: no labels")
    rank, world_size = rank_and_world_size()
    share = shard_indices(len(labels), rank, world_size)
    batches = iter_samples(pipeline, labels, share, seed, batch_size, progress and rank == 0, **call_options)
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for batch, images in batches:
            for index, pixels in zip(batch, images):
                with atomic_path(folder / f"{index:06d}.png") as tmp:
                    Image.fromarray(pixels).save(tmp, format="PNG")
        if rank == 0:
            with atomic_path(folder / "labels.txt") as tmp:
                tmp.write_text("".join(f"{label}\n" for label in labels))
        barrier()
        return folder

    mine = [images for _, images in batches]
    pixels = torch.from_numpy(np.concatenate(mine)) if mine else None
    if world_size > 1:
        height, width = pipeline.autoencoder.config.image_size, pipeline.autoencoder.config.image_size
        local = pixels if pixels is not None else torch.empty(0, height, width, 3, dtype=torch.uint8)
        pixels = all_gather_rows(local)
    path = Path(grid if grid is not None else npz)
    if rank == 0:
        if grid is not None:
            save_image_grid(from_uint8(pixels.permute(0, 3, 1, 2)), path, nrow=nrow, row_labels=row_names(pipeline, labels, nrow))
        else:
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, arr_0=pixels.numpy(), labels=np.asarray(labels, dtype=np.int64))
    barrier()
    return path

