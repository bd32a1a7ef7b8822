"""Latents as diffusion training reads them: their per-channel statistics, and a cache of them on disk.

SVG latents are raw encoder features (plus the aligned residual): channels differ in offset and scale, so
the transformer is trained on ``(z - mean) / std`` per channel (the paper's recipe, docs/diffusion.md) and its
samples are mapped back with the inverse before decoding. The statistics are computed once over the training set
(:func:`compute_latent_statistics`, exact float64 moments, sharded over ranks) and stored with the model
(``latent_stats.safetensors`` in a pipeline folder), so training and sampling use the same ones.

The latent cache (:func:`cache_latents`, :class:`LatentCacheDataset`) encodes a dataset once, each image
and its horizontal mirror, into sharded safetensors files, so training skips the frozen encoder and the
residual encoder. A flip in training then picks the mirror's latent: the same numbers online encoding of
the flipped image gives.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..autoencoder import SVGAutoencoder
from ..config import to_dict
from ..errors import SVGError
from ..training.distributed import all_reduce_, barrier, rank_and_world_size
from ..training.sharding import shard_indices
from ..utils.files import atomic_path
from ..utils.pretrained import read_format_file, read_state_file, write_json


FORMAT = "svg-diffusion-latent-stats"


@dataclass
class LatentStatistics:
    """Per-channel ``mean`` and ``std`` (float32 [C]) of latents [B, C, h, w]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).flatten()
        self.std = torch.as_tensor(self.std, dtype=torch.float32).flatten()
        if self.mean.shape != self.std.shape:
            raise SVGError(f"latent statistics: mean has {self.mean.numel()} channels, std {self.std.numel()}")
        finite = bool(torch.isfinite(self.mean).all()) and bool(torch.isfinite(self.std).all())
        if not finite or not bool((self.std > 0).all()):
            raise SVGError("latent statistics: every mean and std must be finite and every std positive")

    kind = "per_channel"  # as a latent transform (diffusion/latent_transform.py): k = C

    @property
    def channels(self) -> int:
        return self.mean.numel()

    @property
    def latent_channels(self) -> int:
        return self.mean.numel()

    def _broadcast(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise SVGError(f"expected latents [B, {self.channels}, h, w], got shape {tuple(z.shape)}")
        shape = (1, self.channels, 1, 1)
        return self.mean.to(z.device).view(shape), self.std.to(z.device).view(shape)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """``(z - mean) / std`` per channel, in float32: what the transformer is trained on."""
        mean, std = self._broadcast(z)
        return (z.float() - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """``z * std + mean`` per channel, in float32: what the autoencoder's decoder takes."""
        mean, std = self._broadcast(z)
        return z.float() * std + mean

    encode = normalize  # the latent-transform interface
    decode = denormalize

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({"mean": self.mean.contiguous(), "std": self.std.contiguous()}, str(tmp),
                      metadata={"format": FORMAT})
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatentStatistics:
        state = read_state_file(path)
        if set(state) != {"mean", "std"}:
            raise SVGError(f"{path}: expected latent statistics with tensors 'mean' and 'std', found {sorted(state)}")
        return cls(state["mean"], state["std"])


# ---------------------------------------------------------------------------------------------------------
# Computing the statistics
# ---------------------------------------------------------------------------------------------------------


class LatentMoments:
    """Per-channel count, sum and sum of squares of latents, accumulated in float64.

    Float64 keeps the one-pass formula var = (sum(z^2) - n mean^2) / (n - 1) exact to ~1e-12 relative for
    latents whose mean is not millions of stds away from zero, and sums can be added across batches, shards
    and ranks in any order. ``sums`` is [2, C]: row 0 the sums, row 1 the sums of squares.
    """

    def __init__(self, channels: int | None = None, device: torch.device | str = "cpu"):
        self.count = 0
        self.sums = None if channels is None else torch.zeros(2, channels, dtype=torch.float64, device=device)

    def add(self, z: torch.Tensor) -> None:
        """Add latents [B, C, h, w]."""
        z = z.detach().to(torch.float64)
        batch = torch.stack([z.sum(dim=(0, 2, 3)), z.square().sum(dim=(0, 2, 3))])
        self.sums = batch if self.sums is None else self.sums + batch.to(self.sums.device)
        self.count += z.shape[0] * z.shape[2] * z.shape[3]

    def merge(self, sums: torch.Tensor, count: int) -> None:
        """Add moments computed elsewhere (a cache shard's ``sums`` and ``count``)."""
        self.sums = sums.to(torch.float64).clone() if self.sums is None else self.sums + sums.to(self.sums)
        self.count += count

    def all_reduce(self) -> None:
        """Sum the moments of every rank (a no-op in a single process); every rank must call it."""
        packed = torch.cat([self.sums.flatten(), self.sums.new_tensor([self.count])])
        all_reduce_(packed)
        self.sums, self.count = packed[:-1].view(2, -1), int(packed[-1].item())

    def statistics(self) -> LatentStatistics:
        """Mean and unbiased std per channel (what ``z.mean`` / ``z.std`` over batch and positions give)."""
        if self.sums is None or self.count < 2:
            raise SVGError("latent statistics need at least two latent values per channel")
        mean = self.sums[0] / self.count
        variance = (self.sums[1] - self.count * mean.square()) / (self.count - 1)
        return LatentStatistics(mean, variance.clamp_min(0).sqrt())


@torch.no_grad()
def encode_latents(autoencoder: SVGAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """Latents of a batch in float32, outside any autocast: the numbers online training and the cache share."""
    device = next(autoencoder.parameters()).device
    with torch.autocast(device.type, enabled=False):
        return autoencoder.encode(images.to(device)).float()


def _loader(dataset: Dataset, indices: range, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers)


def compute_latent_statistics(autoencoder: SVGAutoencoder, dataset: Dataset, batch_size: int = 256, num_workers: int = 0,
                              progress: bool = True) -> LatentStatistics:
    """Exact per-channel mean and std of the latents of every image of ``dataset`` (no flips, no masking).

    ``autoencoder`` must be in eval mode (running alignment statistics) on its device. Under
    torch.distributed each rank encodes its ``shard_indices`` share and the float64 moments are summed over
    ranks, so every rank returns the statistics of the whole dataset.
    """
    moments = LatentMoments(autoencoder.latent_channels, next(autoencoder.parameters()).device)
    for z in encoded_batches(autoencoder, dataset, batch_size, num_workers, progress, desc="latent statistics"):
        moments.add(z)
    moments.all_reduce()
    return moments.statistics()


def encoded_batches(autoencoder: SVGAutoencoder, dataset: Dataset, batch_size: int = 256, num_workers: int = 0,
                    progress: bool = True, desc: str = "encoding") -> Iterator[torch.Tensor]:
    """The latents of this rank's ``shard_indices`` share of ``dataset``, batch by batch (eval mode, float32)."""
    if autoencoder.training:
        raise SVGError("encoding latents for statistics: put the autoencoder in eval mode (training mode masks residuals)")
    rank, world_size = rank_and_world_size()
    share = shard_indices(len(dataset), rank, world_size)
    for images, _ in tqdm(_loader(dataset, share, batch_size, num_workers), desc=desc, unit="batch",
                          disable=not progress or rank != 0):
        yield encode_latents(autoencoder, images)


# ---------------------------------------------------------------------------------------------------------
# The latent cache
# ---------------------------------------------------------------------------------------------------------

CACHE_FORMAT = "svg-diffusion-latent-cache"
CACHE_INDEX = "index.json"
CACHE_STATS = "latent_stats.safetensors"
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def autoencoder_fingerprint(autoencoder: SVGAutoencoder) -> str:
    """A SHA-256 of what an autoencoder's latents depend on: its config and every tensor of its state (frozen
    encoder included), the decoder's excepted (and the name or folder the encoder was loaded from).

    A latent cache records it, and training refuses a cache made by another autoencoder; a decoder fine-tuned on
    the same latent (``train_parts: decoder``) keeps its caches valid.
    """
    config = to_dict(autoencoder.config)
    if isinstance(autoencoder, SVGAutoencoder):  # (the VAE's encoder is built from its decoder config)
        # Where the frozen encoder was read from does not matter, its weights (hashed below) do.
        for key in ("decoder", "encoder", "encoder_weights"):
            config.pop(key)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, value in sorted(autoencoder.state_dict().items()):
        if name.startswith("decoder."):
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _shard_name(number: int) -> str:
    return f"shard_{number:05d}.safetensors"


def _shard_is_current(path: Path, expected: dict[str, str]) -> bool:
    """Whether an existing shard file was written with the same settings (so an interrupted run can skip it)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError):
        return False
    return all(metadata.get(key) == value for key, value in expected.items())


def cache_latents(autoencoder: SVGAutoencoder, dataset: Dataset, out_dir: str | Path, flips: bool = True,
                  shard_size: int = 4096, dtype: str = "float32", batch_size: int = 256, num_workers: int = 0,
                  dataset_info: dict | None = None, progress: bool = True) -> Path:
    """Encode every image of ``dataset`` once into ``out_dir`` so diffusion training can skip the encoders.

    Writes ``shard_00000.safetensors``, ... (``shard_size`` images each) holding ``latents`` [n, C, h, w]
    (in ``dtype``: "float32", or "bfloat16" for half the disk at ~0.4% relative error per value),
    ``flipped`` (with ``flips``: the latent of each horizontally flipped image, which is not the flipped
    latent: the encoder is not flip-equivariant), ``labels`` int64 [n] and ``moments`` (float64 sums of
    the un-flipped fp32 latents); then ``latent_stats.safetensors`` (the exact per-channel statistics over
    the dataset, un-flipped, from the fp32 latents) and last ``index.json`` (count, shards, shapes, the
    autoencoder's fingerprint, ``dataset_info``, class names), which marks the cache complete.

    Under torch.distributed every rank encodes its share of the shards. A rerun skips shards already
    written with the same settings, so an interrupted cache continues. Returns ``out_dir``.
    """
    if dtype not in CACHE_DTYPES:
        raise SVGError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}, got {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise SVGError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    if autoencoder.training:
        raise SVGError("cache_latents: put the autoencoder in eval mode (training mode masks residuals)")
    out_dir = Path(out_dir)
    rank, world_size = rank_and_world_size()
    fingerprint = autoencoder_fingerprint(autoencoder)
    info = json.loads(json.dumps(dataset_info or {}))  # plain JSON data, compared after a round trip
    expected = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "dtype": dtype, "flips": str(flips),
                "dataset": json.dumps(info, sort_keys=True), "shard_size": str(shard_size)}
    num_shards = -(-len(dataset) // shard_size)
    shards = [range(j * shard_size, min((j + 1) * shard_size, len(dataset))) for j in range(num_shards)]
    mine = [j for j in shard_indices(num_shards, rank, world_size)
            if not _shard_is_current(out_dir / _shard_name(j), expected)]
    images_to_encode = sum(len(shards[j]) for j in mine)
    bar = tqdm(total=images_to_encode, desc="caching latents", unit="img", disable=not progress or rank != 0)
    for j in mine:
        latents, flipped, labels = [], [], []
        for images, batch_labels in _loader(dataset, shards[j], batch_size, num_workers):
            latents.append(encode_latents(autoencoder, images).cpu())
            if flips:
                flipped.append(encode_latents(autoencoder, images.flip(-1)).cpu())
            labels.append(torch.as_tensor(batch_labels, dtype=torch.int64))
            bar.update(len(images))
        moments = LatentMoments()
        moments.add(torch.cat(latents))
        tensors = {"latents": torch.cat(latents).to(CACHE_DTYPES[dtype]).contiguous(), "labels": torch.cat(labels),
                   "moments": moments.sums.cpu()}
        if flips:
            tensors["flipped"] = torch.cat(flipped).to(CACHE_DTYPES[dtype]).contiguous()
        with atomic_path(out_dir / _shard_name(j)) as tmp:
            save_file(tensors, str(tmp), metadata={**expected, "first_index": str(shards[j].start)})
    bar.close()
    barrier()
    if rank == 0:
        cache = LatentCacheDataset(out_dir, index={
            "format": CACHE_FORMAT, "count": len(dataset), "shard_size": shard_size,
            "shards": [_shard_name(j) for j in range(num_shards)], "dtype": dtype, "flips": flips,
            "latent_shape": [autoencoder.latent_channels, autoencoder.latent_size, autoencoder.latent_size],
            "autoencoder": fingerprint, "dataset": info, "classes": list(getattr(dataset, "classes", []) or []),
        })
        cache.moments().statistics().save(out_dir / CACHE_STATS)
        write_json(out_dir / CACHE_INDEX, cache.index)  # last: an index means a complete cache
    barrier()
    return out_dir


class LatentCacheDataset(Dataset):
    """A latent cache written by :func:`cache_latents`, as a Dataset.

    Items are ``(latent, flipped, label)`` when the cache has flipped copies, else ``(latent, label)``;
    latents are float32 [C, h, w] whatever the stored dtype. Shards are memory-mapped and read one row at a
    time, so the cache may be far larger than memory; each DataLoader worker opens its own file handles.
    Attributes: ``index`` (the index JSON), ``folder``, ``flips``, ``classes``, ``latent_shape``.
    """

    def __init__(self, folder: str | Path, index: dict | None = None):
        self.folder = Path(folder)
        if index is None:
            index = read_format_file(self.folder / CACHE_INDEX, CACHE_FORMAT, "a complete latent cache",
                                     " (run `svg-diffusion cache-latents`)")
        self.index = index
        missing = [name for name in index["shards"] if not (self.folder / name).is_file()]
        if missing:
            raise SVGError(f"latent cache {self.folder}: shard {missing[0]} is missing ({len(missing)} of "
                           f"{len(index['shards'])})")
        self.flips = bool(index["flips"])
        self.classes = list(index["classes"])
        self.latent_shape = tuple(index["latent_shape"])
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return int(self.index["count"])

    def __getstate__(self) -> dict:  # file handles stay in the process that opened them
        return {**self.__dict__, "_handles": {}}

    def _shard(self, number: int):
        if number not in self._handles:
            self._handles[number] = safe_open(str(self.folder / self.index["shards"][number]), framework="pt")
        return self._handles[number]

    def __getitem__(self, i: int) -> tuple:
        if not 0 <= i < len(self):
            raise IndexError(f"latent cache index {i} out of range for {len(self)} items")
        shard, row = self._shard(i // self.index["shard_size"]), i % self.index["shard_size"]
        latent = shard.get_slice("latents")[row : row + 1][0].float()
        label = int(shard.get_slice("labels")[row : row + 1][0])
        if not self.flips:
            return latent, label
        return latent, shard.get_slice("flipped")[row : row + 1][0].float(), label

    def moments(self) -> LatentMoments:
        """The latent moments of the whole cache, summed from its shards (the un-flipped fp32 latents)."""
        moments = LatentMoments()
        for number in range(len(self.index["shards"])):
            shard = self._shard(number)
            images = shard.get_slice("labels").get_shape()[0]
            moments.merge(shard.get_tensor("moments"), images * self.latent_shape[1] * self.latent_shape[2])
        return moments

    def latent_batches(self, rank: int = 0, world_size: int = 1, rows: int = 1024) -> Iterator[torch.Tensor]:
        """The un-flipped latents of shards ``shard_indices(num_shards, rank, world_size)``, ``rows`` at a time.

        Reads one slice at a time, so a fit over an ImageNet-size cache streams instead of loading it.
        """
        for number in shard_indices(len(self.index["shards"]), rank, world_size):
            latents = self._shard(number).get_slice("latents")
            count = latents.get_shape()[0]
            for start in range(0, count, rows):
                yield latents[start : min(start + rows, count)].float()

    def statistics(self) -> LatentStatistics:
        """The statistics ``cache_latents`` stored beside the shards."""
        return LatentStatistics.load(self.folder / CACHE_STATS)
