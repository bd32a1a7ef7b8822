"""Latent statistics and the latent cache, on a real (tiny, random) autoencoder and real Fashion-MNIST images."""

import os

import pytest
import torch
from safetensors.torch import load_file

from svg_diffusion.data import FashionMNIST
from svg_diffusion.diffusion.latents import (
    LatentCacheDataset, LatentMoments, LatentStatistics, autoencoder_fingerprint, cache_latents,
    compute_latent_statistics,
)
from svg_diffusion.errors import SVGError
from svg_diffusion.trainers.diffusion import batch_latents, hflip_choices
from svg_diffusion.training import step_generator
from svg_diffusion.training.sharding import StepSampler

from test_autoencoder_model import calibrated, tiny_autoencoder

COUNT = 40


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def dataset(fmnist_dir):
    return FashionMNIST("train", image_size=32, root=fmnist_dir, limit=COUNT)


@pytest.fixture(scope="module")
def images(dataset):
    return torch.stack([dataset[i][0] for i in range(COUNT)])


@pytest.fixture(scope="module")
def autoencoder(images):
    return calibrated(tiny_autoencoder(), images[:16])


@pytest.fixture(scope="module")
def latents(autoencoder, images):
    with torch.no_grad():
        return autoencoder.encode(images)


@pytest.fixture(scope="module")
def cache(autoencoder, dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    cache_latents(autoencoder, dataset, folder, flips=True, shard_size=16, batch_size=12, dataset_info={"name": "test"},
                  progress=False)
    return LatentCacheDataset(folder)


def test_statistics_save_load_and_normalize(tmp_path):
    stats = LatentStatistics(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 1.0]))
    loaded = LatentStatistics.load(stats.save(tmp_path / "stats.safetensors"))
    assert torch.equal(loaded.mean, stats.mean) and torch.equal(loaded.std, stats.std)
    z = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(stats.denormalize(stats.normalize(z)), z)
    assert stats.normalize(z)[:, 1].mean().item() == pytest.approx(((z[:, 1] + 2) / 0.5).mean().item(), abs=1e-6)
    with pytest.raises(SVGError, match=r"expected latents \[B, 3, h, w\]"):
        stats.normalize(torch.zeros(2, 4, 4, 4))
    for std in (0.0, float("inf")):  # an infinite std would pass a test for positive values alone
        with pytest.raises(SVGError, match="every std positive"):
            LatentStatistics(torch.zeros(2), torch.tensor([1.0, std]))


def test_statistics_equal_a_direct_computation(autoencoder, dataset, latents):
    stats = compute_latent_statistics(autoencoder, dataset, batch_size=12, progress=False)
    direct = latents.double()
    torch.testing.assert_close(stats.mean.double(), direct.mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.std.double(), direct.std(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    # moments add up in any grouping (shards, ranks)
    halves = LatentMoments()
    for part in latents.split(COUNT // 2 + 3):
        partial = LatentMoments()
        partial.add(part)
        halves.merge(partial.sums, partial.count)
    whole = LatentMoments()
    whole.add(latents)
    torch.testing.assert_close(halves.sums, whole.sums, rtol=1e-12, atol=1e-9)
    with pytest.raises(SVGError, match="eval mode"):
        compute_latent_statistics(autoencoder.train(), dataset, progress=False)
    autoencoder.eval()


def test_cache_holds_the_latents_of_images_and_of_their_mirrors(cache, autoencoder, images, latents):
    index = cache.index
    assert len(cache) == index["count"] == COUNT and cache.flips
    assert index["shards"] == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    assert index["latent_shape"] == [68, 8, 8] and index["dtype"] == "float32"
    assert index["autoencoder"] == autoencoder_fingerprint(autoencoder) and index["dataset"] == {"name": "test"}
    assert index["classes"][7] == "Sneaker"
    with torch.no_grad():
        mirrored = autoencoder.encode(images.flip(-1))
    for i in (0, 15, 16, 39):  # both sides of a shard boundary
        latent, flipped, label = cache[i]
        assert torch.equal(latent, latents[i]) and torch.equal(flipped, mirrored[i])
        assert label == int(FashionMNIST("train", limit=COUNT).labels[i])
    # the encoder is not flip-equivariant: the mirror's latent is not the mirrored latent
    assert (mirrored - latents.flip(-1)).abs().max() > 0.1
    # the stored statistics are those of the un-mirrored latents
    direct = latents.double()
    torch.testing.assert_close(cache.statistics().mean.double(), direct.mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cache.moments().statistics().std, cache.statistics().std)


def test_rerunning_the_cache_skips_finished_shards(cache, autoencoder, dataset):
    shard = cache.folder / "shard_00001.safetensors"
    before, stored = os.stat(shard).st_mtime_ns, load_file(shard)
    settings = dict(flips=True, shard_size=16, batch_size=12, dataset_info={"name": "test"}, progress=False)
    cache_latents(autoencoder, dataset, cache.folder, **settings)
    assert os.stat(shard).st_mtime_ns == before
    os.remove(shard)  # as if the run had stopped before this shard
    with pytest.raises(SVGError, match="shard shard_00001.safetensors is missing"):
        LatentCacheDataset(cache.folder)
    cache_latents(autoencoder, dataset, cache.folder, **settings)
    again = load_file(shard)
    assert all(torch.equal(again[name], stored[name]) for name in stored)


@pytest.mark.parametrize("world_size", [1, 2])
def test_cached_and_online_batches_are_the_same(cache, autoencoder, dataset, world_size):
    global_batch = 8
    for rank in range(world_size):
        sampler = StepSampler(COUNT, global_batch, seed=3, rank=rank, world_size=world_size)
        for step in range(6):  # crosses an epoch
            indices = sampler.batch(step)
            online_batch = (torch.stack([dataset[i][0] for i in indices]), torch.tensor([dataset[i][1] for i in indices]))
            rows = [cache[i] for i in indices]
            cached_batch = tuple(torch.stack([torch.as_tensor(row[k]) for row in rows]) for k in range(3))
            offset = rank * global_batch // world_size
            online = batch_latents(online_batch, autoencoder, True, step_generator(3, step, "hflip"), global_batch, offset)
            cached = batch_latents(cached_batch, None, True, step_generator(3, step, "hflip"), global_batch, offset)
            # Encodings do not depend on the batch they are computed in, so the numbers are identical.
            assert torch.equal(online[0], cached[0]) and torch.equal(online[1], cached[1])
            flips = hflip_choices(step_generator(3, step, "hflip"), len(indices), global_batch, offset)
            assert torch.equal(cached[0][flips], cached_batch[1][flips])
            assert torch.equal(cached[0][~flips], cached_batch[0][~flips])


def test_bfloat16_cache_is_within_its_rounding(autoencoder, dataset, latents, tmp_path):
    cache_latents(autoencoder, dataset, tmp_path, flips=False, shard_size=64, dtype="bfloat16", progress=False)
    cache = LatentCacheDataset(tmp_path)
    stored = torch.stack([cache[i][0] for i in range(COUNT)])
    assert len(cache[0]) == 2  # (latent, label) without mirrors
    # bfloat16 keeps 8 significant bits: rounding moves a value by at most 2^-8 of its magnitude
    assert ((stored - latents).abs() <= latents.abs() * 2.0**-8).all()
    # the statistics come from the fp32 encodings, not from the rounded values
    torch.testing.assert_close(cache.statistics().mean.double(), latents.double().mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)


def test_cache_errors(autoencoder, dataset, tmp_path):
    with pytest.raises(SVGError, match="index.json is missing"):
        LatentCacheDataset(tmp_path)
    with pytest.raises(SVGError, match="cache dtype must be one of float32, bfloat16"):
        cache_latents(autoencoder, dataset, tmp_path, dtype="float16", progress=False)
    with pytest.raises(SVGError, match="eval mode"):
        cache_latents(autoencoder.train(), dataset, tmp_path, progress=False)
    autoencoder.eval()
    other = calibrated(tiny_autoencoder(), torch.stack([dataset[i][0] for i in range(8)]))
    assert autoencoder_fingerprint(other) != autoencoder_fingerprint(autoencoder)


def test_fingerprint_covers_what_the_latent_depends_on(autoencoder):
    """Weights and encoding settings change it; the decoder and the encoder's folder name do not."""
    import copy
    import dataclasses

    reference = autoencoder_fingerprint(autoencoder)
    moved = copy.deepcopy(autoencoder)
    moved.config = dataclasses.replace(moved.config, encoder="/elsewhere/same_encoder")
    with torch.no_grad():
        moved.decoder.conv_out.weight.add_(1.0)
    assert autoencoder_fingerprint(moved) == reference
    with torch.no_grad():
        moved.residual.head[0].weight.add_(1e-3)
    assert autoencoder_fingerprint(moved) != reference
