"""The latent transform (diffusion/latent_transform.py) on real latents: the shipped demo autoencoder's on real
Fashion-MNIST images. PCA with every direction is the identity; fits are deterministic and equal whether the
latents come in one piece, in batches, from a sharded cache or from two processes; transforms save and load,
inside pipeline folders too, and folders written before transforms existed sample exactly as they always did.
"""

import json
import textwrap
from pathlib import Path

import pytest
import torch

from svg_diffusion.data import FashionMNIST
from svg_diffusion.diffusion import DiT, DiTConfig, guided_velocity, sample_euler, time_grid
from svg_diffusion.diffusion.latent_transform import (
    CovarianceMoments, LatentTransformConfig, PCATransform, check_transform, choose_components, fit_pca,
    load_latent_transform, off_subspace_energy, pca_from_moments, save_latent_transform,
)
from svg_diffusion.diffusion.latents import LatentStatistics, cache_latents, LatentCacheDataset
from svg_diffusion.demo import DEMO_PIPELINE_DIR, demo_pipeline
from svg_diffusion.errors import SVGError
from svg_diffusion.pipeline import STATS_FILE, TRANSFORM_FOLDER, SamplingDefaults, SVGPipeline
from svg_diffusion.evaluation.sources import TensorImages

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return demo_pipeline()


@pytest.fixture(scope="module")
def images(fmnist_dir) -> torch.Tensor:
    data = FashionMNIST("test", limit=96)
    return torch.stack([data[i][0] for i in range(len(data))])


@pytest.fixture(scope="module")
def latents(demo, images) -> torch.Tensor:
    with torch.no_grad():
        return demo.autoencoder.encode(images).float()  # [96, 136, 8, 8]


def assert_same_pca(a: PCATransform, b: PCATransform, atol: float = 1e-6) -> None:
    for name, value in a.state().items():
        torch.testing.assert_close(value, b.state()[name], rtol=0, atol=atol, msg=name)


def test_pca_with_every_direction_is_the_identity_and_whitens(latents):
    pca = fit_pca([latents], latents.shape[1])
    assert pca.channels == pca.latent_channels == 136 and pca.explained_variance == pytest.approx(1.0)
    x = pca.encode(latents)
    torch.testing.assert_close(pca.decode(x), latents, rtol=1e-4, atol=1e-4 * latents.abs().max().item())
    # whitened and decorrelated over the fitting set: the covariance of the coordinates is the identity
    vectors = x.permute(0, 2, 3, 1).reshape(-1, 136).double()
    top = torch.cov(vectors.T)[:40, :40]  # the leading directions (the last ones hold ~1e-6 of the variance)
    torch.testing.assert_close(top, torch.eye(40, dtype=torch.float64), rtol=0, atol=2e-3)


def test_top_k_is_a_projection_onto_the_leading_directions(latents):
    pca = fit_pca([latents], latents.shape[1], explained_variance=0.9)
    assert pca.explained_variance >= 0.9 and pca.channels == choose_components(pca.eigenvalues, explained_variance=0.9)
    assert pca.channels < 40  # a representation latent is low-rank per position
    projected = pca.decode(pca.encode(latents))
    torch.testing.assert_close(pca.decode(pca.encode(projected)), projected, rtol=1e-4, atol=1e-4)
    # what is dropped is what the dropped eigenvalues say (in standardized units, per position)
    dropped = pca.eigenvalues[pca.channels :].sum().item()
    assert off_subspace_energy(pca, latents).item() == pytest.approx(dropped, rel=1e-3)
    assert fit_pca([latents], 136, components=7).channels == 7


def test_fit_is_the_same_in_one_piece_in_batches_and_from_a_sharded_cache(latents, images, demo, tmp_path):
    whole = fit_pca([latents], 136, components=16)
    batches = fit_pca(latents.split(7), 136, components=16)
    assert_same_pca(whole, batches)
    assert_same_pca(whole, fit_pca([latents], 136, components=16))  # deterministic (signs included)
    cache_latents(demo.autoencoder, TensorImages(images), tmp_path / "cache", flips=False, shard_size=40,
                  batch_size=32, progress=False)
    cache = LatentCacheDataset(tmp_path / "cache")
    assert len(cache.index["shards"]) == 3
    streamed = fit_pca(cache.latent_batches(rows=16), 136, components=16)
    assert_same_pca(whole, streamed)
    # each rank's share of shards, summed: what two processes compute (see the torchrun test)
    moments = [CovarianceMoments(136) for _ in range(2)]
    for rank, m in enumerate(moments):
        for z in cache.latent_batches(rank, 2):
            m.add(z)
    moments[0].sum += moments[1].sum
    moments[0].outer += moments[1].outer
    moments[0].count += moments[1].count
    assert_same_pca(whole, pca_from_moments(moments[0], components=16))


def test_two_processes_fit_what_one_fits(latents, images, demo, tmp_path, torchrun):
    cache_latents(demo.autoencoder, TensorImages(images), tmp_path / "cache", flips=False, shard_size=40,
                  batch_size=32, progress=False)
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent("""
        import sys
        import torch.distributed as dist
        from svg_diffusion.diffusion.latent_transform import fit_pca
        from svg_diffusion.diffusion.latents import LatentCacheDataset
        dist.init_process_group("gloo")
        cache = LatentCacheDataset(sys.argv[1])
        pca = fit_pca(cache.latent_batches(dist.get_rank(), dist.get_world_size()), 136, components=16)
        if dist.get_rank() == 0:
            pca.save(sys.argv[2])
        dist.destroy_process_group()
    """))
    torchrun(script, tmp_path / "cache", tmp_path / "fitted")
    assert_same_pca(fit_pca([latents], 136, components=16), load_latent_transform(tmp_path / "fitted"))


def test_save_and_load_keep_the_transform(latents, tmp_path):
    pca = fit_pca([latents], 136, components=12)
    loaded = load_latent_transform(pca.save(tmp_path / "pca"))
    assert isinstance(loaded, PCATransform) and loaded.channels == 12
    assert_same_pca(pca, loaded, atol=0)
    config = json.loads((tmp_path / "pca" / "config.json").read_text())
    assert config["kind"] == "pca" and config["components"] == 12 and config["latent_channels"] == 136
    stats = LatentStatistics(latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3)))
    per_channel = load_latent_transform(save_latent_transform(stats, tmp_path / "stats"))
    assert per_channel.kind == "per_channel" and torch.equal(per_channel.std, stats.std)
    with pytest.raises(SVGError, match="latent_transform.kind is 'pca'"):
        check_transform(per_channel, LatentTransformConfig(kind="pca"), 136, "here")
    with pytest.raises(SVGError, match="12 components, latent_transform.components is 16"):
        check_transform(loaded, LatentTransformConfig(kind="pca", components=16), 136, "here")
    with pytest.raises(SVGError, match="not a latent transform folder"):
        load_latent_transform(tmp_path)


@pytest.mark.parametrize("settings, message", [
    (dict(kind="pca", components=4, explained_variance=0.9), "not both"),
    (dict(kind="per_channel", components=4), "options of kind 'pca'"),
    (dict(kind="pca", components=0), "components must be an integer >= 1, got 0"),
    (dict(kind="pca", explained_variance=1.5), r"in \(0, 1\]"),
    (dict(kind="zca"), "must be one of"),
])
def test_config_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        LatentTransformConfig(**settings)


def random_dit(in_channels: int) -> DiT:
    """A tiny DiT on 8x8 latents whose samples depend on its (seeded random) weights."""
    torch.manual_seed(0)
    transformer = DiT(DiTConfig(in_channels=in_channels, input_size=8, patch_size=2, hidden_size=32, depth=2,
                                num_heads=2, num_classes=10))
    with torch.no_grad():  # adaLN-Zero starts at zero velocity: perturb so samples depend on the weights
        for p in transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return transformer


def pca_pipeline(demo, latents, k: int = 16) -> SVGPipeline:
    pca = fit_pca([latents], 136, components=k)
    return SVGPipeline(demo.autoencoder, random_dit(k), pca, demo.class_names, SamplingDefaults(num_steps=3, shift=2.0))


def test_a_pca_pipeline_samples_through_the_transform_and_saves_it(demo, latents, tmp_path):
    pipe = pca_pipeline(demo, latents)
    assert pipe.noise_shape(2) == (2, 16, 8, 8) and pipe.latent_stats is pipe.latent_transform.stats
    noise = torch.randn(pipe.noise_shape(2), generator=torch.Generator().manual_seed(0))
    latent = pipe([0, 7], latents=noise, output_type="latent")
    velocity = guided_velocity(pipe.transformer, torch.tensor([0, 7]), pipe.sampling.guidance, 3)
    expected = pipe.latent_transform.decode(sample_euler(velocity, noise, time_grid(3, 2.0)))
    torch.testing.assert_close(latent, expected, rtol=0, atol=0)
    assert latent.shape == (2, 136, 8, 8)

    folder = pipe.save_pretrained(tmp_path / "pipe")
    assert (folder / TRANSFORM_FOLDER / "transform.safetensors").is_file() and not (folder / STATS_FILE).exists()
    loaded = SVGPipeline.from_pretrained(folder)
    assert_same_pca(pipe.latent_transform, loaded.latent_transform, atol=0)
    assert torch.equal(loaded([0, 7], latents=noise, output_type="latent"), latent)
    # saving a per-channel pipeline over it leaves no stale PCA behind
    per_channel = LatentStatistics(latents.mean((0, 2, 3)), latents.std((0, 2, 3)))
    SVGPipeline(demo.autoencoder, random_dit(136), per_channel, demo.class_names).save_pretrained(folder)
    assert not (folder / TRANSFORM_FOLDER).exists()
    assert SVGPipeline.from_pretrained(folder).latent_transform.kind == "per_channel"


def test_the_transform_must_fit_the_transformer(demo, latents):
    pipe = pca_pipeline(demo, latents, k=16)
    with pytest.raises(SVGError, match="latent transform make 8x8"):
        SVGPipeline(demo.autoencoder, pipe.transformer, fit_pca([latents], 136, components=8))


def test_a_pipeline_folder_from_before_transforms_samples_exactly_as_documented(demo, latents, tmp_path):
    """A per-channel pipeline folder holds latent_stats.safetensors only, as every folder saved before transforms
    existed (the first shipped demo's): it loads as per-channel and samples the same numbers as ever."""
    stats = LatentStatistics(latents.mean((0, 2, 3)), latents.std((0, 2, 3)))
    folder = SVGPipeline(demo.autoencoder, random_dit(136), stats, demo.class_names,
                         SamplingDefaults(num_steps=3, shift=2.0)).save_pretrained(tmp_path / "per_channel")
    assert (folder / STATS_FILE).is_file() and not (folder / TRANSFORM_FOLDER).exists()
    old = SVGPipeline.from_pretrained(folder)
    assert old.latent_transform.kind == "per_channel" and torch.equal(old.latent_transform.mean, stats.mean)
    noise = torch.randn(old.noise_shape(2), generator=torch.Generator().manual_seed(3))
    latent = old([2, 9], latents=noise, num_steps=3, output_type="latent")
    velocity = guided_velocity(old.transformer, torch.tensor([2, 9]), old.sampling.guidance, 3)
    expected = stats.denormalize(sample_euler(velocity, noise, time_grid(3, old.sampling.shift)))
    assert torch.equal(latent, expected)
