"""SVGPipeline on real (small, randomly initialized) components: sampling, outputs, labels, save/load."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from svg_diffusion.data import FashionMNIST
from svg_diffusion.config import to_dict
from svg_diffusion.diffusion import (
    DiT, DiTConfig, GuidanceConfig, guided_average_velocity, guided_velocity, mean_flow_sample, sample_euler, time_grid,
)
from svg_diffusion.diffusion.latents import LatentStatistics
from svg_diffusion.errors import SVGError
from svg_diffusion.pipeline import SamplingDefaults, SVGPipeline

from test_autoencoder_model import calibrated, tiny_autoencoder


def tiny_pipeline(num_classes: int = 10, sampling: SamplingDefaults | None = None, **dit_options) -> SVGPipeline:
    images = FashionMNIST("test", limit=16)
    batch = torch.stack([images[i][0] for i in range(16)])
    autoencoder = calibrated(tiny_autoencoder(), batch)
    latents = autoencoder.encode(batch)
    stats = LatentStatistics(latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3)))
    torch.manual_seed(0)
    transformer = DiT(DiTConfig(in_channels=autoencoder.latent_channels, input_size=autoencoder.latent_size,
                                hidden_size=32, depth=2, num_heads=2, num_classes=num_classes, **dit_options))
    # adaLN-Zero starts as the zero velocity: perturb every weight so sampling depends on the labels.
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    names = [f"class {i}" for i in range(num_classes)]
    return SVGPipeline(autoencoder, transformer, stats, names, sampling or SamplingDefaults(num_steps=4, shift=2.0))


@pytest.fixture(scope="module")
def pipe() -> SVGPipeline:
    return tiny_pipeline()


@pytest.mark.parametrize("batched_cfg", [True, False])
def test_call_equals_the_documented_sampling_steps(pipe, batched_cfg):
    noise = torch.randn(pipe.noise_shape(3), generator=torch.Generator().manual_seed(1))
    latent = pipe([0, 4, 9], latents=noise, guidance_scale=3.0, output_type="latent", batched_cfg=batched_cfg)
    labels = torch.tensor([0, 4, 9])
    velocity = guided_velocity(pipe.transformer, labels, GuidanceConfig(scale=3.0), 4, batched=batched_cfg)
    expected = pipe.latent_stats.denormalize(sample_euler(velocity, noise, time_grid(4, 2.0)))
    torch.testing.assert_close(latent, expected, rtol=0, atol=0)
    images = pipe([0, 4, 9], latents=noise, guidance_scale=3.0, output_type="pt", batched_cfg=batched_cfg)
    torch.testing.assert_close(images, pipe.autoencoder.decode(expected).clamp(-1, 1))


def test_two_pass_cfg_is_the_batched_path_to_fp32_rounding(pipe):
    noise = torch.randn(pipe.noise_shape(3), generator=torch.Generator().manual_seed(2))
    batched, two_pass = (pipe([0, 4, 9], latents=noise, guidance_scale=3.0, output_type="latent", batched_cfg=batched)
                         for batched in (True, False))
    torch.testing.assert_close(two_pass, batched, rtol=1e-5, atol=1e-5)
    unguided = pipe([0, 4, 9], latents=noise, guidance_scale=1.0, output_type="latent", batched_cfg=False)
    assert (two_pass - unguided).abs().max() > 1e-2  # the unguided branch did take part


def test_output_types_and_seeds(pipe):
    seed = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    pil = pipe([1, 2], generator=seed())
    array = pipe([1, 2], generator=seed(), output_type="np")
    assert [im.size for im in pil] == [(32, 32)] * 2 and all(isinstance(im, Image.Image) for im in pil)
    assert array.dtype == np.uint8 and array.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(pil[0]), array[0])
    other = pipe([1, 2], generator=torch.Generator().manual_seed(8), output_type="np")
    assert np.abs(other.astype(int) - array).max() > 0


def test_class_names_are_labels(pipe):
    noise = torch.randn(pipe.noise_shape(2), generator=torch.Generator().manual_seed(3))
    by_name = pipe(["class 3", "CLASS 5"], latents=noise, output_type="latent")
    by_index = pipe(torch.tensor([3, 5]), latents=noise, output_type="latent")
    torch.testing.assert_close(by_name, by_index, rtol=0, atol=0)
    with pytest.raises(SVGError, match="unknown class 'coat'"):
        pipe(["coat"])
    with pytest.raises(SVGError, match="out of range"):
        pipe([10])
    with pytest.raises(SVGError, match="latents must have shape"):
        pipe([1], latents=noise)
    with pytest.raises(SVGError, match="unknown output_type"):
        pipe([1], output_type="png")
    with pytest.raises(SVGError, match="unknown precision 'fp16'"):
        pipe([1], precision="fp16")


def test_save_and_load_reproduce_the_samples(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["format"] == "svg-diffusion-pipeline" and index["sampling"]["num_steps"] == 4
    loaded = SVGPipeline.from_pretrained(tmp_path / "pipe")
    noise = torch.randn(pipe.noise_shape(2), generator=torch.Generator().manual_seed(4))
    for sampler in ("euler", "heun"):
        torch.testing.assert_close(loaded([2, 6], latents=noise, sampler=sampler, output_type="pt"),
                                   pipe([2, 6], latents=noise, sampler=sampler, output_type="pt"), rtol=0, atol=0)
    assert loaded.class_names == pipe.class_names


def test_autoencoder_only_pipeline(tmp_path):
    images = torch.stack([FashionMNIST("test", limit=4)[i][0] for i in range(4)])
    autoencoder = calibrated(tiny_autoencoder(), images)
    SVGPipeline(autoencoder).save_pretrained(tmp_path / "ae")
    loaded = SVGPipeline.from_pretrained(tmp_path / "ae")
    assert loaded.transformer is None
    torch.testing.assert_close(loaded.autoencoder.encode(images), autoencoder.encode(images))
    with pytest.raises(SVGError, match="no transformer"):
        loaded([0])


def test_a_diverging_sample_is_an_error_not_a_picture(pipe):
    noise = torch.randn(pipe.noise_shape(2), generator=torch.Generator().manual_seed(0))
    noise[1, 0, 0, 0] = float("inf")
    with pytest.raises(SVGError, match="sampling diverged: the latent is NaN or infinite after step 1 of 4"):
        pipe([0, 1], latents=noise)


def test_missing_or_foreign_folders_are_clear_errors(tmp_path, pipe):
    with pytest.raises(SVGError, match="model_index.json is missing"):
        SVGPipeline.from_pretrained(tmp_path)
    pipe.transformer.save_pretrained(tmp_path / "dit")
    with pytest.raises(SVGError, match="expected format 'svg-diffusion-autoencoder'"):
        pipe.autoencoder.from_pretrained(tmp_path / "dit")


# ----------------------------------------------------------------------------------------- MeanFlow


@pytest.fixture(scope="module")
def mean_flow_pipe() -> SVGPipeline:
    """A MeanFlow transformer with the guidance input that defaults to two mean_flow steps."""
    sampling = SamplingDefaults(num_steps=2, sampler="mean_flow", shift=2.0, guidance=GuidanceConfig(scale=2.0))
    return tiny_pipeline(sampling=sampling, interval_input=True, guidance_input=True)


@pytest.mark.parametrize("steps", [1, 3])
def test_mean_flow_sampler_takes_the_documented_steps(mean_flow_pipe, steps):
    pipe = mean_flow_pipe
    noise = torch.randn(pipe.noise_shape(3), generator=torch.Generator().manual_seed(5))
    latent = pipe([0, 4, 9], latents=noise, num_steps=steps, guidance_scale=3.0, output_type="latent")
    average_velocity = guided_average_velocity(pipe.transformer, torch.tensor([0, 4, 9]), guidance_scale=3.0)
    expected = pipe.latent_stats.denormalize(mean_flow_sample(average_velocity, noise, time_grid(steps, 2.0)))
    torch.testing.assert_close(latent, expected, rtol=0, atol=0)
    # the pipeline's defaults: two mean_flow steps at guidance 2
    default = pipe([0, 4, 9], latents=noise, output_type="latent")
    explicit = pipe([0, 4, 9], latents=noise, sampler="mean_flow", num_steps=2, guidance_scale=2.0,
                    output_type="latent")
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    # a MeanFlow transformer is a velocity model at r = t: the ODE samplers run it too
    assert pipe.samplers == ["euler", "heun", "adams_bashforth", "dpm_solver_2m", "euler_maruyama", "mean_flow"]
    assert pipe([0], latents=noise[:1], sampler="euler", output_type="latent").shape == (1, *pipe.noise_shape(1)[1:])


def test_mean_flow_needs_a_mean_flow_transformer_and_constant_guidance(pipe, mean_flow_pipe, tmp_path):
    assert "mean_flow" not in pipe.samplers
    with pytest.raises(SVGError, match="sampler 'mean_flow' needs a MeanFlow transformer .* use one of euler, heun"):
        pipe([0], sampler="mean_flow", num_steps=1)
    with pytest.raises(SVGError, match="sampler 'mean_flow' needs a MeanFlow transformer"):  # as a folder's default
        SVGPipeline(pipe.autoencoder, pipe.transformer, pipe.latent_transform, pipe.class_names,
                    SamplingDefaults(sampler="mean_flow", guidance=GuidanceConfig(scale=1.0)))
    with pytest.raises(SVGError, match="takes a constant guidance scale"):
        mean_flow_pipe([0], guidance=GuidanceConfig(scale=2.0, mode="late"))
    no_guidance_input = tiny_pipeline(interval_input=True)
    with pytest.raises(SVGError, match="guidance scale 1.5: this MeanFlow model has no guidance input"):
        no_guidance_input([0], sampler="mean_flow")  # the default guidance, 1.5
    assert no_guidance_input([0], sampler="mean_flow", guidance_scale=1.0, output_type="np").shape == (1, 32, 32, 3)


def test_a_mean_flow_pipeline_saves_and_loads(mean_flow_pipe, tmp_path):
    folder = mean_flow_pipe.save_pretrained(tmp_path / "pipe")
    loaded = SVGPipeline.from_pretrained(folder)
    assert to_dict(loaded.sampling) == to_dict(mean_flow_pipe.sampling) and loaded.sampling.sampler == "mean_flow"
    assert loaded.transformer.config == mean_flow_pipe.transformer.config
    noise = torch.randn(loaded.noise_shape(2), generator=torch.Generator().manual_seed(6))
    for steps in (1, 2):
        expected = mean_flow_pipe([2, 6], latents=noise, num_steps=steps, output_type="pt")
        torch.testing.assert_close(loaded([2, 6], latents=noise, num_steps=steps, output_type="pt"), expected,
                                   rtol=0, atol=0)
