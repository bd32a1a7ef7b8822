"""The autoencoder trainer on real Fashion-MNIST images with a tiny real model: the command, exact resume
through the GAN phase, 2 gloo processes == 1 process, the NaN stop and bad configs.

The 2-process run launches this file with ``python -m torch.distributed.run --nproc_per_node 2``; each
process trains (and evaluates) with ``worker``, then the test repeats the run in one process and compares.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from svg_diffusion.autoencoder import SVGAutoencoder
from svg_diffusion.cli import main
from svg_diffusion.config import ConfigError, from_dict, load_config, to_dict
from svg_diffusion.data import FashionMNIST
from svg_diffusion.diffusion.latents import autoencoder_fingerprint
from svg_diffusion.encoders import FrozenEncoder, VisionTransformer, get_config, load_encoder, save_encoder
from svg_diffusion.errors import SVGError
from svg_diffusion.evaluation.reconstruction import evaluate_reconstruction
from svg_diffusion.diffusion.guidance import GuidanceConfig
from svg_diffusion.diffusion.latent_transform import fit_pca, save_latent_transform
from svg_diffusion.diffusion.transformer import DiT, DiTConfig
from svg_diffusion.pipeline import SamplingDefaults, SVGPipeline
from svg_diffusion.trainers.autoencoder import (AutoencoderTrainConfig, AutoencoderTrainer, TrainedParts,
                                                train_autoencoder)
from svg_diffusion.training import Engine, checkpoint_path, list_checkpoints, load_checkpoint, read_records
from svg_diffusion.training.randomness import derive_seed

# 16x16 images, the 'tiny' frozen encoder (64 channels, patch 4: 4x4 latents), 4 residual channels, a small
# decoder and critic; the GAN starts after the first step so every run below goes through both phases.
TINY = {
    "engine": {"max_steps": 4, "global_batch_size": 8, "log_every": 1, "checkpoint_every": 2, "sample_every": 2,
               "num_workers": 0, "device": "cpu"},
    "data": {"source": "fashion_mnist", "image_size": 16, "limit": 64, "hflip": True},
    "model": {
        "encoder": "tiny", "image_size": 16,
        "residual": {"channels": 4, "depth": 1, "width": 32, "num_heads": 2, "mlp_dim": 64},
        "decoder": {"z_channels": 68, "resolution": 16, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
                    "attn_resolutions": []},
    },
    "loss": {"disc_start": 1, "disc_layers": 2, "disc_channels": 32},
    "optimizer": {"lr": 1e-4},
    "preview_images": 4,
}
REPO = Path(__file__).resolve().parents[1]
GAN_METRICS = ("loss", "rec_loss", "l1_loss", "lpips_loss", "gan_loss", "gan_weight", "disc_loss")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def tiny_config(out_dir: Path, optimizer: dict | None = None, **engine) -> AutoencoderTrainConfig:
    data = json.loads(json.dumps(TINY))
    data["engine"].update(out_dir=str(out_dir), **engine)
    data["optimizer"].update(optimizer or {})
    return from_dict(AutoencoderTrainConfig, data)


def trajectory(out_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_records(Path(out_dir) / "metrics.jsonl") if key in r]


def assert_same_state(a: dict, b: dict) -> None:
    """Two nested state dicts (modules, optimizers) hold bit-identical values."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def finetune_config(out_dir: Path, base: Path, max_steps: int = 3, **settings) -> AutoencoderTrainConfig:
    data = json.loads(json.dumps(TINY))
    data["engine"].update(out_dir=str(out_dir), max_steps=max_steps, checkpoint_every=1, sample_every=3)
    data.update(init_from=str(base), train_parts="decoder", **settings)
    return from_dict(AutoencoderTrainConfig, data)


def test_decoder_finetuning_keeps_the_latent_and_resumes_exactly(tmp_path, fmnist_dir):
    base = train_autoencoder(tiny_config(tmp_path / "base", max_steps=2, checkpoint_every=2))
    straight = train_autoencoder(finetune_config(tmp_path / "straight", base, latent_noise=0.5))
    before, after = SVGAutoencoder.from_pretrained(base), SVGAutoencoder.from_pretrained(straight)
    # the latent is the base model's (a cache of it stays valid), the decoder learned
    assert autoencoder_fingerprint(after) == autoencoder_fingerprint(before)
    for name in ("residual", "alignment"):
        assert_same_state(getattr(before, name).state_dict(), getattr(after, name).state_dict())
    assert not torch.equal(before.decoder.conv_out.weight, after.decoder.conv_out.weight)
    state = load_checkpoint(checkpoint_path(tmp_path / "straight", 3))
    assert set(state["modules"]["autoencoder"]) == {k for k in state["modules"]["autoencoder"] if k.startswith("decoder.")}
    assert state["trainer"]["latent_noise_std"].shape == (68,)
    # the noise scale is measured once and kept: a resumed run continues bit-identically
    train_autoencoder(finetune_config(tmp_path / "resumed", base, max_steps=2, latent_noise=0.5))
    train_autoencoder(finetune_config(tmp_path / "resumed", base, latent_noise=0.5), resume=True)
    resumed = load_checkpoint(checkpoint_path(tmp_path / "resumed", 3))
    for part in ("modules", "optimizers", "trainer"):
        assert_same_state(state[part], resumed[part])


def one_step_base(tmp_path: Path, fmnist_dir) -> tuple:
    """A base autoencoder trained one step, loaded, and 24 training images with their latents."""
    base = train_autoencoder(tiny_config(tmp_path / "base", max_steps=1, checkpoint_every=1))
    autoencoder = SVGAutoencoder.from_pretrained(base)
    dataset = FashionMNIST("train", image_size=16, root=fmnist_dir, limit=24)
    images = torch.stack([dataset[i][0] for i in range(24)])
    with torch.no_grad():
        latents = autoencoder.encode(images)
    return base, autoencoder, images, latents


def test_decoder_finetuning_with_noise_in_a_latent_transforms_coordinates(tmp_path, fmnist_dir):
    base, autoencoder, images, latents = one_step_base(tmp_path, fmnist_dir)
    transform = fit_pca([latents], 68, components=6)
    folder = save_latent_transform(transform, tmp_path / "transform")
    # The decoder sees T.decode(T.encode(z) + noise): a latent of the transform's subspace, noised in its coordinates.
    parts = TrainedParts(autoencoder, decoder_only=True)
    noise = 0.3 * torch.randn(4, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = parts(images[:4], perturb=lambda coords: coords + noise, noise_transform=transform)
        expected = transform.decode(transform.encode(latents[:4]) + noise)
        torch.testing.assert_close(out.latent, expected)
        torch.testing.assert_close(out.recon, autoencoder.decode(expected))
        projected = parts(images[:4], noise_transform=transform).latent  # no noise: the projection alone
        torch.testing.assert_close(projected, transform.decode(transform.encode(latents[:4])))
        assert (projected - latents[:4]).abs().max() > 1e-2  # 6 of 68 directions: the projection drops something
    # A run keeps the transform in its checkpoints, resumes bit-identically, and refuses another transform.
    settings = {"latent_noise": 0.5, "latent_noise_transform": str(folder)}
    train_autoencoder(finetune_config(tmp_path / "straight", base, **settings))
    state = load_checkpoint(checkpoint_path(tmp_path / "straight", 3))
    assert torch.equal(state["trainer"]["latent_noise_transform"]["components"], transform.components)
    train_autoencoder(finetune_config(tmp_path / "resumed", base, max_steps=2, **settings))
    train_autoencoder(finetune_config(tmp_path / "resumed", base, **settings), resume=True)
    resumed = load_checkpoint(checkpoint_path(tmp_path / "resumed", 3))
    for part in ("modules", "optimizers", "trainer"):
        assert_same_state(state[part], resumed[part])
    other = save_latent_transform(fit_pca([latents], 68, components=5), tmp_path / "other")
    with pytest.raises(SVGError, match="not the transform the checkpoint was trained with"):
        train_autoencoder(finetune_config(tmp_path / "resumed", base, max_steps=4, latent_noise=0.5,
                                          latent_noise_transform=str(other)), resume=True)
    narrow = save_latent_transform(fit_pca([latents[:, :34]], 34, components=4), tmp_path / "narrow")
    with pytest.raises(SVGError, match="it maps 34-channel latents, the autoencoder makes 68"):
        train_autoencoder(finetune_config(tmp_path / "narrow_run", base, latent_noise_transform=str(narrow)))


def denoiser_pipeline(folder: Path, autoencoder: SVGAutoencoder, transform, seed: int = 0) -> Path:
    """A pipeline whose tiny random DiT samples in ``transform`` with guidance 2 by default."""
    torch.manual_seed(seed)
    transformer = DiT(DiTConfig(in_channels=transform.channels, input_size=autoencoder.latent_size, hidden_size=32,
                                depth=1, num_heads=2, num_classes=10))
    with torch.no_grad():  # adaLN-Zero starts as the zero velocity: perturb so the estimate depends on x, t and y
        for p in transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sampling = SamplingDefaults(num_steps=3, shift=2.0, guidance=GuidanceConfig(scale=2.0))
    return SVGPipeline(autoencoder, transformer.eval(), transform, [str(i) for i in range(10)], sampling).save_pretrained(folder)


def test_decoder_finetuning_on_the_denoisers_one_step_estimates(tmp_path, fmnist_dir):
    base, autoencoder, images, latents = one_step_base(tmp_path, fmnist_dir)
    transform = fit_pca([latents], 68, components=6)
    folder = denoiser_pipeline(tmp_path / "pipeline", autoencoder, transform)
    settings = {"latent_noise": 0.5, "latent_denoiser": str(folder)}  # the noise transform is the pipeline's
    torch.manual_seed(derive_seed(0, "init"))  # as the engine seeds: the random 'tiny' encoder is the base model's
    trainer = AutoencoderTrainer(finetune_config(tmp_path / "unused", base, **settings), torch.device("cpu"), images[:4])
    assert torch.equal(trainer.noise_transform.components, transform.components)
    # Picked rows get z_t + (1 - t) * v_guided(z_t, t, y), z_t = t * m + (1 - t) * start; the others the noise.
    g = torch.Generator().manual_seed(0)
    noise, start = 0.3 * torch.randn(4, 6, 4, 4, generator=g), torch.randn(4, 6, 4, 4, generator=g)
    picked, times, labels = torch.tensor([True, False, True, False]), torch.tensor([0.6, 0.7, 1.0, 0.9]), torch.arange(4)
    coords = transform.encode(latents[:4])
    with torch.no_grad():
        out = trainer._perturbation(noise, (picked, times, start, labels))(coords)
        z_t = 0.6 * coords[:1] + 0.4 * start[:1]
        v_cond = trainer.denoiser(z_t, times[:1], labels[:1])
        v_uncond = trainer.denoiser(z_t, times[:1], torch.tensor([10]))
        torch.testing.assert_close(out[:1], z_t + 0.4 * (v_uncond + 2.0 * (v_cond - v_uncond)))
    torch.testing.assert_close(out[~picked], coords[~picked] + noise[~picked])
    assert torch.equal(out[2], coords[2])  # at t = 1 the estimate is the clean latent
    assert (out[0] - coords[0]).abs().max() > 1e-2
    # A run keeps the DiT's digest, resumes bit-identically, and refuses a changed DiT or another transform.
    train_autoencoder(finetune_config(tmp_path / "straight", base, **settings))
    state = load_checkpoint(checkpoint_path(tmp_path / "straight", 3))
    assert len(state["trainer"]["latent_denoiser"]) == 64
    train_autoencoder(finetune_config(tmp_path / "resumed", base, max_steps=2, **settings))
    train_autoencoder(finetune_config(tmp_path / "resumed", base, **settings), resume=True)
    resumed = load_checkpoint(checkpoint_path(tmp_path / "resumed", 3))
    for part in ("modules", "optimizers", "trainer"):
        assert_same_state(state[part], resumed[part])
    denoiser_pipeline(folder, autoencoder, transform, seed=1)
    with pytest.raises(SVGError, match="not the transformer the checkpoint was trained with"):
        train_autoencoder(finetune_config(tmp_path / "resumed", base, max_steps=4, **settings), resume=True)
    other = save_latent_transform(fit_pca([latents], 68, components=5), tmp_path / "other")
    with pytest.raises(SVGError, match="samples in another latent transform"):
        train_autoencoder(finetune_config(tmp_path / "other_run", base, latent_noise_transform=str(other), **settings))


@pytest.mark.parametrize("settings, message", [
    ({"train_parts": "decoder"}, "set init_from"),
    ({"latent_noise": 0.1}, "latent_noise needs train_parts: decoder"),
    ({"latent_noise_transform": "demo-pipeline"}, "latent_noise_transform needs train_parts: decoder"),
    ({"train_parts": "encoder"}, "train_parts"),
    ({"init_from_subset": True}, "init_from_subset needs init_from"),
    ({"latent_denoiser": "demo-pipeline"}, "latent_denoiser needs train_parts: decoder"),
    ({"latent_denoise_fraction": 0}, "latent_denoise_fraction"),
    ({"latent_denoise_times": [0.9, 0.5]}, "latent_denoise_times"),
])
def test_finetuning_config_errors(settings, message):
    data = {**json.loads(json.dumps(TINY)), **settings}
    data["engine"]["out_dir"] = "unused"
    with pytest.raises((ConfigError, ValueError), match=message):
        from_dict(AutoencoderTrainConfig, data)


def test_a_slimmer_decoder_starts_from_the_weights_it_shares(tmp_path, fmnist_dir, capsys):
    base = train_autoencoder(tiny_config(tmp_path / "base", max_steps=1, checkpoint_every=1))
    trained = SVGAutoencoder.from_pretrained(base).decoder.state_dict()
    slim = finetune_config(tmp_path / "slim", base, max_steps=1, init_from_subset=True)
    slim.model.decoder.num_res_blocks = 0  # one residual block per level instead of two

    def build(config: AutoencoderTrainConfig) -> AutoencoderTrainer:
        Engine(config.engine)  # seeds torch as a run does, so the 'tiny' frozen encoder is the base's
        return AutoencoderTrainer(config, torch.device("cpu"), torch.zeros(1, 3, 16, 16))

    trainer = build(slim)
    # exactly the second block of each level is left out; everything the slim decoder has is the trained one's
    assert sorted(trainer.dropped_weights) == sorted(f"decoder.{key}" for key in trained if ".block.1." in key)
    own = trainer.autoencoder.decoder.state_dict()
    assert own.keys() < trained.keys() and all(torch.equal(own[key], trained[key]) for key in own)
    folder = train_autoencoder(slim)
    assert len(SVGAutoencoder.from_pretrained(folder).decoder.up[0].block) == 1
    assert "init_from: 24 weights of 12 modules left out" in capsys.readouterr().out

    slim.init_from_subset = False  # without the option the extra weights are an error, by name
    with pytest.raises(SVGError, match=r"unexpected keys: decoder\.up\.0\.block\.1\."):
        build(slim)
    wider = finetune_config(tmp_path / "wider", base, init_from_subset=True)
    wider.model.decoder.num_res_blocks = 2  # a weight the source lacks stays an error with the option
    with pytest.raises(SVGError, match=r"missing keys: decoder\.up\.0\.block\.2\."):
        build(wider)


def test_init_from_must_hold_the_same_frozen_encoder(tmp_path, fmnist_dir):
    base = train_autoencoder(tiny_config(tmp_path / "base", max_steps=1, checkpoint_every=1))
    other = load_encoder(base / "encoder")
    with torch.no_grad():
        other.vit.norm.weight.mul_(2)  # the same architecture with other weights: another latent
    config = finetune_config(tmp_path / "run", base)
    config.model.encoder = str(save_encoder(other, tmp_path / "other_encoder"))
    with pytest.raises(SVGError, match="its frozen encoder differs from the config's model.encoder"):
        train_autoencoder(config)


def test_command_trains_and_writes_a_working_model(tmp_path, fmnist_dir, capsys):
    config = write_yaml(tmp_path / "ae.yaml", TINY)
    out_dir = tmp_path / "run"
    code = main(["train-autoencoder", "--config", str(config), "--set", f"engine.out_dir={out_dir}",
                 "--set", "engine.max_steps=8", "--set", "loss.disc_start=6", "--set", "optimizer.lr=1e-3"])
    assert code == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder == out_dir / "autoencoder"

    rec = [value for _, value in trajectory(out_dir, "rec_loss")]
    assert len(rec) == 8 and max(rec[-2:]) < 0.8 * rec[0], rec  # L1 + LPIPS falls
    assert [s for s, _ in trajectory(out_dir, "disc_loss")] == [7, 8]  # the critic from disc_start on
    assert [s for s, _ in trajectory(out_dir, "preview_psnr")] == [2, 4, 6, 8]
    assert {p.name for p in (out_dir / "samples").iterdir()} == {f"recon_{s:08d}.png" for s in (2, 4, 6, 8)}
    assert (out_dir / "loss_curves.png").is_file() and (out_dir / "config.yaml").is_file()

    # Checkpoints hold the trained parts and the critic, not the frozen encoder.
    state = load_checkpoint(checkpoint_path(out_dir, 8))
    assert set(state["modules"]) == {"autoencoder", "discriminator"}
    assert {key.split(".")[0] for key in state["modules"]["autoencoder"]} == {"residual", "alignment", "decoder"}

    # The saved model is the trained one, with its running alignment statistics (one update per step) ...
    model = SVGAutoencoder.from_pretrained(folder)
    assert int(model.alignment.num_batches_tracked) == 8
    assert_same_state(load_file(folder / "model.safetensors"), state["modules"]["autoencoder"])
    # ... whose latents do not depend on the batch they are encoded in.
    dataset = FashionMNIST("test", image_size=16, root=fmnist_dir, limit=6)
    images = torch.stack([dataset[i][0] for i in range(6)])
    with torch.no_grad():
        whole = model.encode(images)
        alone = torch.cat([model.encode(images[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(alone, whole, atol=1e-5, rtol=1e-5)


def test_resume_continues_exactly_through_the_gan_phase(tmp_path, fmnist_dir):
    out_dir = tmp_path / "run"
    train_autoencoder(tiny_config(out_dir))
    uninterrupted = load_checkpoint(checkpoint_path(out_dir, 4))
    final_weights = load_file(out_dir / "autoencoder" / "model.safetensors")
    expected = {key: trajectory(out_dir, key) for key in GAN_METRICS}

    # As if the run had died after its step-2 checkpoint, with the GAN active since the second step.
    checkpoint_path(out_dir, 4).unlink()
    shutil.rmtree(out_dir / "autoencoder")
    train_autoencoder(tiny_config(out_dir), resume=True)

    resumed = load_checkpoint(checkpoint_path(out_dir, 4))
    assert_same_state(resumed["modules"], uninterrupted["modules"])
    assert_same_state(resumed["optimizers"], uninterrupted["optimizers"])
    assert_same_state(load_file(out_dir / "autoencoder" / "model.safetensors"), final_weights)
    for key, values in expected.items():
        assert trajectory(out_dir, key) == values, key


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, fmnist_dir):
    out_dir = tmp_path / "run"
    config = tiny_config(out_dir, checkpoint_every=1)
    config.optimizer.lr = 1e30  # one Adam step moves every weight by ~1e30: the next loss overflows
    with pytest.raises(SVGError, match=r"loss is NaN or infinite in step 2; nothing was saved, the last good "
                                       r"checkpoint is .*step_00000001\.pt"):
        train_autoencoder(config)
    assert [step for step, _ in list_checkpoints(out_dir)] == [1]
    assert load_checkpoint(checkpoint_path(out_dir, 1))["step"] == 1
    assert not (out_dir / "autoencoder").exists()


def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    bad = json.loads(json.dumps(TINY))
    bad["model"]["residual"]["heads"] = 4
    for data, message in (
        (bad, "model.residual.heads: unknown key"),
        ({**TINY, "data": {**TINY["data"], "image_size": 64}}, "data.image_size 64 differs from model.image_size 16"),
    ):
        config = write_yaml(tmp_path / "bad.yaml", {**data, "engine": {**data["engine"], "out_dir": str(tmp_path)}})
        assert main(["train-autoencoder", "--config", str(config)]) == 2
        stderr = capsys.readouterr().err
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith("svg-diffusion train-autoencoder: error: ") and message in stderr
    with pytest.raises(ConfigError, match=r"optimizer: betas\[1\] must be a finite number in \[0, 1\), got 1.5"):
        from_dict(AutoencoderTrainConfig, {**TINY, "engine": {**TINY["engine"], "out_dir": "x"},
                                           "optimizer": {"betas": [0.5, 1.5]}})


@pytest.mark.parametrize("name, encoder", [("demo", "demo"), ("imagenet", "dinov3_vits16plus")])
def test_shipped_configs_fit_their_encoders(name, encoder):
    config = load_config(AutoencoderTrainConfig, REPO / "configs" / name / "autoencoder.yaml")
    with torch.device("meta"):  # shapes only: no memory, no initialization time
        model = SVGAutoencoder(config.model, FrozenEncoder(VisionTransformer(get_config(encoder))))
    assert model.latent_channels == config.model.decoder.z_channels
    if name == "imagenet":  # the paper's model: 392 x 16 x 16 latents, ~11M residual and ~43M decoder parameters
        assert (model.latent_channels, model.latent_size) == (392, 16)
        millions = {part: sum(p.numel() for p in getattr(model, part).parameters()) / 1e6 for part in ("residual", "decoder")}
        assert 10.5 < millions["residual"] < 12 and 41 < millions["decoder"] < 45, millions
        assert config.engine.global_batch_size == 512 and config.optimizer.betas == (0.5, 0.9)


# ---------------------------------------------------------------------------------------- two processes

# Adam's first steps are about lr * sign(gradient): a gradient entry whose sign float round-off decides (the
# sum order differs between 1 and 2 processes) moves by +-lr. With lr 1e-5 those flips stay far below the
# 1e-5 tolerance on the losses; any real difference between the two runs would not.
DDP_OPTIMIZER = {"lr": 1e-5}


def worker(out_dir: Path) -> None:
    """One of two torchrun processes: train the tiny config, then evaluate the model, sharded."""
    folder = train_autoencoder(tiny_config(out_dir / "run", DDP_OPTIMIZER))
    metrics = evaluate_reconstruction(SVGAutoencoder.from_pretrained(folder), FashionMNIST("test", 16, limit=7),
                                      batch_size=2, rfid=False, progress=False)
    (out_dir / f"eval_rank{os.environ['RANK']}.json").write_text(json.dumps(metrics))


@pytest.mark.slow  # a 2-process and a 1-process run: about half a minute on 2 idle cores, minutes on busy ones
def test_two_processes_train_and_evaluate_like_one(tmp_path, fmnist_dir, torchrun):
    torchrun(__file__, tmp_path / "ddp")

    single = train_autoencoder(tiny_config(tmp_path / "single" / "run", DDP_OPTIMIZER))
    for key in GAN_METRICS:
        ours, theirs = trajectory(tmp_path / "single" / "run", key), trajectory(tmp_path / "ddp" / "run", key)
        assert len(ours) == len(theirs) > 0, key
        for (s1, v1), (s2, v2) in zip(ours, theirs):
            assert s1 == s2 and v1 == pytest.approx(v2, abs=1e-5), (key, s1)
    # The trained models agree where it matters: the latents and reconstructions. (Not every parameter: a
    # conv bias right before a one-channel GroupNorm group has an exactly-zero gradient, so Adam moves it by
    # round-off noise, without any effect on the outputs.)
    models = [SVGAutoencoder.from_pretrained(folder) for folder in (single, tmp_path / "ddp" / "run" / "autoencoder")]
    images = torch.stack([image for image, _ in FashionMNIST("test", 16, limit=7)])
    with torch.no_grad():
        (latent, recon), (ddp_latent, ddp_recon) = (model(images) for model in models)
    torch.testing.assert_close(ddp_latent, latent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ddp_recon, recon, atol=1e-5, rtol=1e-5)

    expected = evaluate_reconstruction(models[0], FashionMNIST("test", 16, limit=7), batch_size=2, rfid=False,
                                       progress=False)
    for rank in (0, 1):
        metrics = json.loads((tmp_path / "ddp" / f"eval_rank{rank}.json").read_text())
        assert metrics.keys() == expected.keys()
        for key in ("images", "psnr", "ssim", "lpips"):
            assert metrics[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-4), (rank, key)


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))


def test_the_demo_decoder_configs_load_and_differ_only_in_the_noise():
    finetune, noise = (load_config(AutoencoderTrainConfig, REPO / "configs" / "demo" / name)
                       for name in ("decoder_finetune.yaml", "decoder_noise.yaml"))
    assert noise.train_parts == "decoder" and noise.latent_noise > 0 and noise.latent_noise_transform == "demo-pipeline"
    differ = {key for key, value in to_dict(noise).items() if to_dict(finetune)[key] != value}
    assert differ == {"engine", "latent_noise", "latent_noise_transform"}
    assert {key for key, value in to_dict(noise.engine).items()
            if to_dict(finetune.engine)[key] != value} == {"out_dir", "max_steps"}


def test_the_denoise_decoder_config_is_the_slim_noise_recipe_plus_the_denoiser():
    noise, denoise = (load_config(AutoencoderTrainConfig, REPO / "configs" / "demo" / name)
                      for name in ("decoder_noise.yaml", "decoder_denoise.yaml"))
    assert denoise.latent_denoiser == "demo-pipeline" and denoise.model.decoder.num_res_blocks == 0
    differ = {key for key, value in to_dict(denoise).items() if to_dict(noise)[key] != value}
    assert differ == {"engine", "model", "latent_denoiser"}  # fraction and times are the defaults, written out
    assert {key for key, value in to_dict(denoise.model.decoder).items()
            if to_dict(noise.model.decoder)[key] != value} == {"num_res_blocks"}
