"""The diffusion trainer and the `train` / `sample` commands, on a tiny real autoencoder, real Fashion-MNIST
images and a tiny DiT: the loss falls, the run leaves a pipeline that samples, resumes are exact, cached and
online latents train identically, and two gloo processes under torchrun compute what one process computes.
"""

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from svg_diffusion.autoencoder import load_autoencoder
from svg_diffusion.cli import main
from svg_diffusion.config import to_dict
from svg_diffusion.data import DataConfig, FashionMNIST
from svg_diffusion.diffusion.flow import FlowMatchingConfig, dimension_shift, sample_training_time
from svg_diffusion.diffusion.latent_transform import LatentTransformConfig, fit_pca, load_latent_transform
from svg_diffusion.diffusion.latents import LatentCacheDataset, LatentStatistics, compute_latent_statistics
from svg_diffusion.errors import SVGError
from svg_diffusion.pipeline import SamplingDefaults, SVGPipeline
from svg_diffusion.sample_writer import class_labels, sample_noise, write_samples
from svg_diffusion.trainers.diffusion import (
    DiffusionTrainConfig, PreviewConfig, TransformerConfig, cache_training_latents, train_diffusion,
)
from svg_diffusion.training import EngineConfig, checkpoint_path, list_checkpoints, load_checkpoint, read_records

from test_autoencoder_model import calibrated, tiny_autoencoder
from test_engine import assert_identical

DATA_SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory, fmnist_dir) -> Path:
    images = FashionMNIST("train", limit=16)
    autoencoder = calibrated(tiny_autoencoder(), torch.stack([images[i][0] for i in range(16)]))
    return autoencoder.save_pretrained(tmp_path_factory.mktemp("autoencoder") / "autoencoder")


def tiny_config(out_dir, autoencoder_dir, cache=None, stats=None, **engine) -> DiffusionTrainConfig:
    settings = dict(max_steps=6, global_batch_size=8, log_every=1, checkpoint_every=3, sample_every=0,
                    num_workers=0, device="cpu")
    return DiffusionTrainConfig(
        engine=EngineConfig(out_dir=str(out_dir), **{**settings, **engine}),
        autoencoder=str(autoencoder_dir),
        data=DataConfig(source="fashion_mnist", image_size=32, hflip=True, limit=DATA_SIZE),
        latent_cache=None if cache is None else str(cache),
        latent_stats=None if stats is None else str(stats),
        model=TransformerConfig("S", {"hidden_size": 32, "depth": 2, "num_heads": 2}),
        ema_decay=0.9,
        sampling=SamplingDefaults(num_steps=3, shift=2.0),
        preview=PreviewConfig(classes=[1, 7, 8], per_class=2, num_steps=2),
        encode_batch_size=16,
    )


def losses(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_records(out_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, autoencoder_dir) -> Path:
    folder = tmp_path_factory.mktemp("latent_cache")
    return cache_training_latents(tiny_config(folder / "unused", autoencoder_dir), folder, shard_size=20, progress=False)


@pytest.fixture(scope="module")
def stats_file(cache_dir) -> Path:
    """The training latents' statistics (as the cache stores them), so online runs need not compute them."""
    return cache_dir / "latent_stats.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, autoencoder_dir, cache_dir) -> Path:
    """A 30-step run from the cache with a preview grid at the end."""
    out_dir = tmp_path_factory.mktemp("trained")
    config = tiny_config(out_dir, autoencoder_dir, cache_dir, max_steps=30, checkpoint_every=30, sample_every=30)
    config.optimizer.lr = 3e-3
    train_diffusion(config)
    return out_dir


def test_loss_falls_and_the_run_leaves_a_pipeline_and_a_grid(trained):
    curve = [loss for _, loss in losses(trained)]
    assert len(curve) == 30 and np.mean(curve[-8:]) < 0.8 * np.mean(curve[:8])
    state = load_checkpoint(checkpoint_path(trained, 30))
    pipe = SVGPipeline.from_pretrained(trained / "pipeline")
    # the pipeline holds the EMA weights and the run's statistics
    for name, value in pipe.transformer.state_dict().items():
        assert torch.equal(value, state["trainer"]["ema"]["shadow"][name]), name
    assert torch.equal(pipe.latent_stats.mean, state["trainer"]["latent_transform"]["mean"])
    assert torch.equal(LatentStatistics.load(trained / "latent_stats.safetensors").std, pipe.latent_stats.std)
    assert pipe.class_names[7] == "Sneaker" and pipe.sampling.num_steps == 3
    images = pipe(["Trouser", "Bag"], generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.shape == (2, 32, 32, 3)
    with Image.open(trained / "samples" / "step_00000030.png") as grid:
        assert grid.height == 3 * 32 + 4 * 2 and grid.width > 2 * 32 + 3 * 2  # 3 rows of 2, a label margin


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, autoencoder_dir, stats_file):
    """Online encoding with flips; stopped after 3 steps (as a preemption would), resumed to 6."""
    train_diffusion(tiny_config(tmp_path / "straight", autoencoder_dir, stats=stats_file))
    train_diffusion(tiny_config(tmp_path / "resumed", autoencoder_dir, stats=stats_file, max_steps=3))
    assert [step for step, _ in list_checkpoints(tmp_path / "resumed")] == [3]
    train_diffusion(tiny_config(tmp_path / "resumed", autoencoder_dir, stats=stats_file), resume=True)
    straight, resumed = (load_checkpoint(checkpoint_path(tmp_path / run, 6)) for run in ("straight", "resumed"))
    assert straight["trainer"]["ema"]["num_updates"] == 6
    for part in ("modules", "optimizers", "trainer"):
        assert_identical(straight[part], resumed[part], part)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_cached_latents_train_like_online_encoding(tmp_path, autoencoder_dir, cache_dir):
    train_diffusion(tiny_config(tmp_path / "online", autoencoder_dir, max_steps=3))
    train_diffusion(tiny_config(tmp_path / "cached", autoencoder_dir, cache_dir, max_steps=3))
    online, cached = (load_checkpoint(checkpoint_path(tmp_path / run, 3)) for run in ("online", "cached"))
    assert losses(tmp_path / "online") == losses(tmp_path / "cached")
    assert_identical(online["modules"], cached["modules"])
    # computed online or stored by the cache, the statistics agree (float64 moments of the same latents)
    stats = [LatentStatistics.load(tmp_path / run / "latent_stats.safetensors") for run in ("online", "cached")]
    torch.testing.assert_close(stats[0].mean, stats[1].mean, rtol=1e-6, atol=1e-7)


def test_a_cache_from_another_autoencoder_is_refused(tmp_path, autoencoder_dir, cache_dir):
    other = tiny_autoencoder()
    other.eval().save_pretrained(tmp_path / "other")  # uncalibrated: different alignment statistics
    config = tiny_config(tmp_path / "run", tmp_path / "other", cache_dir)
    with pytest.raises(SVGError, match="made with another autoencoder"):
        train_diffusion(config)


def test_sample_command_writes_grid_folder_and_npz(trained, tmp_path, capsys):
    pipeline = str(trained / "pipeline")
    common = ["sample", "--pipeline", pipeline, "--steps", "2", "--cfg", "2.0", "--device", "cpu"]
    assert main([*common, "--classes", "Trouser", "8", "--per-class", "2", "--out", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.height == 2 * 32 + 3 * 2 and grid.width > 2 * 32 + 3 * 2  # 2 rows, a label margin
    assert main([*common, "--num", "3", "--out-dir", str(tmp_path / "folder"), "--batch-size", "2"]) == 0
    files = sorted(p.name for p in (tmp_path / "folder").iterdir())
    assert files == [f"{i:06d}.png" for i in range(3)] + ["labels.txt"]
    assert (tmp_path / "folder" / "labels.txt").read_text().split() == ["0", "1", "2"]
    assert main([*common, "--num", "3", "--npz", str(tmp_path / "a.npz"), "--batch-size", "3"]) == 0
    assert main([*common, "--num", "3", "--npz", str(tmp_path / "b.npz"), "--two-pass-cfg"]) == 0
    a = np.load(tmp_path / "a.npz")
    assert np.abs(np.load(tmp_path / "b.npz")["arr_0"].astype(int) - a["arr_0"]).max() <= 1  # fp32 rounding
    assert a["arr_0"].shape == (3, 32, 32, 3) and a["arr_0"].dtype == np.uint8 and list(a["labels"]) == [0, 1, 2]
    # sample i's noise depends on (seed, i) only, so batching does not change the samples
    for i in range(3):
        with Image.open(tmp_path / "folder" / f"{i:06d}.png") as image:
            assert np.array_equal(np.asarray(image), a["arr_0"][i])
    pipe = SVGPipeline.from_pretrained(pipeline)
    assert torch.equal(sample_noise(pipe, [3, 4], seed=0), sample_noise(pipe, range(5), seed=0)[3:])
    assert not torch.equal(sample_noise(pipe, [3], seed=0), sample_noise(pipe, [3], seed=1))


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_command_and_bad_configs(tmp_path, autoencoder_dir, stats_file, capsys):
    config = to_dict(tiny_config(tmp_path / "run", autoencoder_dir, stats=stats_file, max_steps=2, checkpoint_every=2))
    good = write_yaml(tmp_path / "good.yaml", config)
    assert main(["train", "--config", str(good), "--set", "engine.max_steps=1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "run" / "pipeline")
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [1]
    bad = {
        "unknown key": ({**config, "learning_rate": 1.0}, "learning_rate: unknown key"),
        "derived field": ({**config, "model": {"size": "S", "overrides": {"in_channels": 3}}},
                          "overrides.in_channels is set by the autoencoder and the data"),
        "missing autoencoder": ({**config, "autoencoder": str(tmp_path / "nowhere")}, "config.json is missing"),
        "preview class": ({**config, "preview": {"classes": [10]}}, "preview.classes: class 10 does not exist"),
    }
    for name, (data, message) in bad.items():
        path = write_yaml(tmp_path / f"{name}.yaml", {**data, "engine": {**config["engine"], "out_dir": str(tmp_path / name)}})
        assert main(["train", "--config", str(path)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("svg-diffusion train: error: ") and message in err[0], (name, err)


# ----------------------------------------------------------------------------------------- latent transforms


def pca_config(out_dir, autoencoder_dir, cache_dir, **engine) -> DiffusionTrainConfig:
    config = tiny_config(out_dir, autoencoder_dir, cache_dir, **engine)
    config.latent_transform = LatentTransformConfig(kind="pca", components=6)
    config.model = TransformerConfig("S", {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": 1})
    return config


def test_a_pca_run_fits_saves_and_resumes_its_transform(tmp_path, autoencoder_dir, cache_dir):
    train_diffusion(pca_config(tmp_path / "straight", autoencoder_dir, cache_dir))
    fitted = load_latent_transform(tmp_path / "straight" / "latent_transform")
    assert fitted.kind == "pca" and fitted.channels == 6 and not (tmp_path / "straight" / "latent_stats.safetensors").exists()
    # fitted over the cache's latents: what a fit over the same latents in one piece gives
    cache = LatentCacheDataset(cache_dir)
    reference = fit_pca([torch.stack([cache[i][0] for i in range(len(cache))])], fitted.latent_channels, components=6)
    for name, value in reference.state().items():
        torch.testing.assert_close(fitted.state()[name], value, rtol=0, atol=1e-6)
    pipe = SVGPipeline.from_pretrained(tmp_path / "straight" / "pipeline")
    assert pipe.transformer.config.in_channels == 6 and pipe.noise_shape(1) == (1, 6, 8, 8)
    assert pipe(["Bag"], generator=torch.Generator().manual_seed(0), output_type="np").shape == (1, 32, 32, 3)

    train_diffusion(pca_config(tmp_path / "resumed", autoencoder_dir, cache_dir, max_steps=3))
    train_diffusion(pca_config(tmp_path / "resumed", autoencoder_dir, cache_dir), resume=True)
    straight, resumed = (load_checkpoint(checkpoint_path(tmp_path / run, 6)) for run in ("straight", "resumed"))
    for part in ("modules", "optimizers", "trainer"):
        assert_identical(straight[part], resumed[part], part)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_fit_latent_transform_command_and_using_its_folder(tmp_path, autoencoder_dir, cache_dir, capsys):
    config = to_dict(pca_config(tmp_path / "run", autoencoder_dir, cache_dir, max_steps=1))
    path = write_yaml(tmp_path / "config.yaml", config)
    folder = tmp_path / "pca"
    assert main(["fit-latent-transform", "--config", str(path), "--out", str(folder),
                 "--explained-variance", "0.9"]) == 0
    fitted = load_latent_transform(folder)
    assert fitted.explained_variance >= 0.9 and f"{folder}: pca, " in capsys.readouterr().out
    # a run that names the folder uses it as it is (and checks it against the config)
    using = {**config, "latent_transform": {"kind": "pca", "explained_variance": 0.9, "path": str(folder)}}
    assert main(["train", "--config", str(write_yaml(tmp_path / "using.yaml", using))]) == 0
    used = load_latent_transform(tmp_path / "run" / "latent_transform")
    assert torch.equal(used.components, fitted.components)
    wrong = {**using, "latent_transform": {"kind": "pca", "components": 3, "path": str(folder)},
             "engine": {**config["engine"], "out_dir": str(tmp_path / "wrong")}}
    assert main(["train", "--config", str(write_yaml(tmp_path / "wrong.yaml", wrong))]) == 2
    assert f"components, latent_transform.components is 3" in capsys.readouterr().err
    assert main(["fit-latent-transform", "--config", str(path)]) == 2  # no --out, no latent_transform.path
    assert "no output folder" in capsys.readouterr().err


def test_shift_auto_follows_the_modelled_latent_and_wide_tokens_warn(tmp_path, autoencoder_dir, cache_dir):
    assert dimension_shift(256, 392) == pytest.approx(4.95, abs=0.01)  # SVG-XL's latent, RAE's rule
    config = pca_config(tmp_path / "run", autoencoder_dir, cache_dir, max_steps=1)
    config.flow = FlowMatchingConfig(shift="auto", shift_base=96.0)
    config.model = TransformerConfig("S", {"hidden_size": 16, "depth": 1, "num_heads": 2, "patch_size": 2})
    with pytest.warns(UserWarning, match=r"patch tokens hold 24 numbers \(2x2 patch x 6 channels\) but its width is 16"):
        train_diffusion(config)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["flow"]["shift"] == "auto"
    # 8x8 positions x 6 channels / 96 = 4, so k = 2: the run trained exactly as one with shift 2 does
    assert config.flow.resolved(64, 6).shift == pytest.approx(2.0)
    explicit = dataclasses.replace(config, engine=dataclasses.replace(config.engine, out_dir=str(tmp_path / "two")),
                                   flow=FlowMatchingConfig(shift=2.0))
    with pytest.warns(UserWarning):
        train_diffusion(explicit)
    assert losses(tmp_path / "two") == losses(tmp_path / "run")
    with pytest.raises(ValueError, match="resolve it for the latent first"):
        sample_training_time(4, config.flow, None)


# ----------------------------------------------------------------------------------------- two processes

RUN = dict(max_steps=4, checkpoint_every=2, global_batch_size=8)


def worker(out_dir: Path, autoencoder_dir: Path) -> None:
    """Under torchrun: distributed statistics, online training, and sharded sampling."""
    from svg_diffusion.training.distributed import setup_distributed

    setup_distributed("cpu")
    rank = int(os.environ["RANK"])
    stats = compute_latent_statistics(load_autoencoder(autoencoder_dir), FashionMNIST("train", limit=DATA_SIZE),
                                      batch_size=16, progress=False)
    if rank == 0:
        stats.save(out_dir / "stats.safetensors")
    pipeline = train_diffusion(tiny_config(out_dir / "run", autoencoder_dir, **RUN))
    pipe = SVGPipeline.from_pretrained(pipeline)
    write_samples(pipe, class_labels(pipe, num=5), npz=out_dir / "samples.npz", batch_size=2, num_steps=2,
                  progress=False)


@pytest.mark.slow  # three processes start and import torch: ~30 s on 2 idle cores, minutes on busy ones
def test_two_processes_equal_one_process(tmp_path, autoencoder_dir, torchrun):
    torchrun(__file__, tmp_path / "ddp", autoencoder_dir)

    pipeline = train_diffusion(tiny_config(tmp_path / "single", autoencoder_dir, **RUN))
    ours, theirs = losses(tmp_path / "single"), losses(tmp_path / "ddp" / "run")
    assert [s for s, _ in ours] == [s for s, _ in theirs] == [1, 2, 3, 4]
    for (step, mine), (_, other) in zip(ours, theirs):
        assert mine == pytest.approx(other, abs=1e-5), step
    single, distributed = (load_checkpoint(checkpoint_path(run, 4)) for run in (tmp_path / "single", tmp_path / "ddp" / "run"))
    for name, value in single["modules"]["transformer"].items():
        torch.testing.assert_close(distributed["modules"]["transformer"][name], value, atol=1e-5, rtol=1e-4)
    stats = LatentStatistics.load(tmp_path / "ddp" / "stats.safetensors")
    reference = LatentStatistics.load(tmp_path / "single" / "latent_stats.safetensors")
    torch.testing.assert_close(stats.std, reference.std, rtol=1e-6, atol=1e-7)
    # sharded sampling from the 2-process pipeline equals sampling it in one process
    pipe = SVGPipeline.from_pretrained(tmp_path / "ddp" / "run" / "pipeline")
    write_samples(pipe, class_labels(pipe, num=5), npz=tmp_path / "one.npz", batch_size=5, num_steps=2, progress=False)
    one, sharded = (np.load(path)["arr_0"].astype(np.int16) for path in (tmp_path / "one.npz", tmp_path / "ddp" / "samples.npz"))
    # Same noise per sample; other batch shapes change fp32 sums in the last bits, which can flip a rounding.
    assert one.shape == sharded.shape and np.abs(one - sharded).max() <= 1
    assert pipeline.is_dir()


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
