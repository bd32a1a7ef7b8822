"""The VAE baseline (autoencoder/vae.py) with tiny real models on real Fashion-MNIST images: the KL term, a
deterministic per-image encode, the folder round trip, training through train-autoencoder (`model.kind: vae`)
and a VAE folder as the autoencoder of the diffusion trainer, the latent cache and the pipeline.
"""

import json
from pathlib import Path

import pytest
import torch

from svg_diffusion.autoencoder import KLAutoencoder, VAEConfig, kl_divergence, load_autoencoder
from svg_diffusion.config import ConfigError, from_dict, load_config, to_dict
from svg_diffusion.data import DataConfig, FashionMNIST
from svg_diffusion.errors import SVGError
from svg_diffusion.evaluation.reconstruction import eval_autoencoder
from svg_diffusion.pipeline import SamplingDefaults, SVGPipeline
from svg_diffusion.trainers.autoencoder import AutoencoderTrainConfig, train_autoencoder
from svg_diffusion.trainers.diffusion import DiffusionTrainConfig, TransformerConfig, cache_training_latents, train_diffusion
from svg_diffusion.training import EngineConfig, read_records

DECODER = {"z_channels": 4, "resolution": 16, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
           "attn_resolutions": [4]}
MODEL = {"kind": "vae", "image_size": 16, "latent_channels": 4, "kl_weight": 1e-6, "decoder": DECODER}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def tiny_vae(seed: int = 0) -> KLAutoencoder:
    torch.manual_seed(seed)
    return KLAutoencoder(from_dict(VAEConfig, MODEL)).eval()


def images(count: int, size: int = 16) -> torch.Tensor:
    data = FashionMNIST("test", image_size=size, limit=count)
    return torch.stack([data[i][0] for i in range(count)])


def test_kl_is_zero_for_a_standard_normal_posterior_and_positive_otherwise():
    zeros = torch.zeros(3, 4, 2, 2)
    assert kl_divergence(zeros, zeros, image_elements=12).item() == 0.0
    # One element off N(0, 1) in each way; the closed form 0.5 (mu^2 + s^2 - 1 - log s^2), summed per image,
    # averaged over the 3 images, divided by the 12 pixel values.
    mean, logvar = zeros.clone(), zeros.clone()
    mean[0, 0, 0, 0] = 2.0
    logvar[1, 2, 1, 1] = -1.0
    expected = (0.5 * 4.0 + 0.5 * (torch.exp(torch.tensor(-1.0)) - 1.0 + 1.0)) / 3 / 12
    assert kl_divergence(mean, logvar, image_elements=12).item() == pytest.approx(expected.item(), rel=1e-6)


def test_encode_is_the_posterior_mean_deterministic_and_batch_independent(fmnist_dir):
    model, x = tiny_vae(), images(6)
    with torch.no_grad():
        whole = model.encode(x)
        assert whole.shape == (6, 4, 4, 4)
        assert torch.equal(whole, model.encode(x))
        assert torch.allclose(whole[2:5], model.encode(x[2:5]), atol=1e-6)
        assert torch.equal(whole, model.posterior(x)[0])
        # The training forward samples around the mean with the given noise; without noise it is the mean.
        noise = torch.randn(whole.shape, generator=torch.Generator().manual_seed(0))
        assert torch.equal(model(x).latent, whole)
        sampled = model(x, noise).latent
        assert not torch.allclose(sampled, whole) and model(x, noise).kl.item() > 0


def test_save_load_round_trip_and_wrong_folders(tmp_path, fmnist_dir):
    model, x = tiny_vae(), images(4)
    folder = model.save_pretrained(tmp_path / "vae")
    loaded = load_autoencoder(folder)
    assert isinstance(loaded, KLAutoencoder) and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(x)), model.decode(model.encode(x)))
    with pytest.raises(SVGError, match="missing"):
        load_autoencoder(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(SVGError, match="expected format"):
        load_autoencoder(folder)
    with pytest.raises(SVGError, match="expected latents"):
        model.decode(torch.zeros(1, 5, 4, 4))


def test_config_is_typed_and_validated():
    with pytest.raises(ConfigError, match="z_channels"):
        from_dict(VAEConfig, {**MODEL, "latent_channels": 8})
    with pytest.raises(ConfigError, match="kl_weight"):
        from_dict(VAEConfig, {**MODEL, "kl_weight": -1.0})
    with pytest.raises(ConfigError, match="kind"):
        from_dict(VAEConfig, {key: value for key, value in MODEL.items() if key != "kind"})


def train_config(out_dir, max_steps: int) -> AutoencoderTrainConfig:
    """A KL weight large enough that the KL term shows in the logged total loss."""
    return from_dict(AutoencoderTrainConfig, {
        "engine": {"out_dir": str(out_dir), "max_steps": max_steps, "global_batch_size": 8, "log_every": 1,
                   "checkpoint_every": max_steps, "sample_every": 0, "device": "cpu", "seed": 0},
        "data": {"source": "fashion_mnist", "image_size": 16, "limit": 64, "hflip": False},
        "model": {**MODEL, "kl_weight": 0.1},
        "optimizer": {"lr": 1e-3},
        "preview_images": 2,
    })


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory, fmnist_dir):
    out_dir = tmp_path_factory.mktemp("vae_run")
    return out_dir, train_autoencoder(train_config(out_dir, max_steps=10))


def test_train_autoencoder_with_kind_vae_lowers_the_loss(trained_vae):
    out_dir, folder = trained_vae
    records = read_records(out_dir / "metrics.jsonl")
    for r in records:
        assert r["kl_loss"] > 0 and r["loss"] == pytest.approx(r["rec_loss"] + 0.1 * r["kl_loss"], rel=1e-4)
    first, last = sum(r["rec_loss"] for r in records[:3]), sum(r["rec_loss"] for r in records[-3:])
    assert last < 0.8 * first
    assert isinstance(load_autoencoder(folder), KLAutoencoder)
    # eval-autoencoder takes the folder as it is.
    metrics = eval_autoencoder(folder, limit=8, rfid=False, progress=False)
    assert metrics["images"] == 8 and metrics["psnr"] > 5


def test_a_vae_folder_trains_a_dit_through_the_cache_and_samples(trained_vae, tmp_path):
    _, folder = trained_vae
    config = DiffusionTrainConfig(
        engine=EngineConfig(out_dir=str(tmp_path / "dit"), max_steps=3, global_batch_size=8, log_every=1,
                            checkpoint_every=3, sample_every=0, device="cpu"),
        autoencoder=str(folder),
        data=DataConfig(source="fashion_mnist", image_size=16, hflip=False, limit=24),
        latent_cache=str(tmp_path / "cache"),
        model=TransformerConfig("S", {"hidden_size": 32, "depth": 1, "num_heads": 2}),
        sampling=SamplingDefaults(num_steps=2, shift=1.0),
        encode_batch_size=8,
    )
    cache_training_latents(config, progress=False)
    pipeline_dir = train_diffusion(config)
    pipe = SVGPipeline.from_pretrained(pipeline_dir)
    assert isinstance(pipe.autoencoder, KLAutoencoder)
    out = pipe([0, 3], generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_train_config_picks_the_model_class_by_kind(tmp_path):
    base = train_config(tmp_path, max_steps=1)
    assert isinstance(base.model, VAEConfig)
    data = {"engine": {"out_dir": str(tmp_path), "max_steps": 1, "global_batch_size": 8},
            "data": {"source": "fashion_mnist", "image_size": 16}}
    with pytest.raises(ConfigError, match="model.latent_chanels: unknown key"):
        from_dict(AutoencoderTrainConfig, {**data, "model": {**MODEL, "latent_chanels": 4}})
    with pytest.raises(ConfigError, match="model.kind: expected 'vae'"):
        from_dict(AutoencoderTrainConfig, {**data, "model": {**MODEL, "kind": "vqgan"}})


DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
# The VAE arms of the small-scale reproduction: autoencoder config, DiT config, latent channels (8x8x4, LDM's;
# 8x8x16, as many numbers per image as the SVG arm's 16 PCA directions).
DEMO_VAE_ARMS = [("vae.yaml", "vae_diffusion.yaml", 4), ("vae16.yaml", "vae16_diffusion.yaml", 16)]


@pytest.mark.parametrize("autoencoder, diffusion, channels", DEMO_VAE_ARMS)
def test_shipped_demo_configs_are_the_svg_recipe_with_the_vae(autoencoder, diffusion, channels):
    vae, svg = (load_config(AutoencoderTrainConfig, DEMO_CONFIGS / name) for name in (autoencoder, "autoencoder.yaml"))
    assert isinstance(vae.model, VAEConfig) and vae.model.latent_channels == channels
    with torch.device("meta"):
        model = KLAutoencoder(vae.model)
    assert (model.latent_channels, model.latent_size) == (channels, 8)  # the SVG latent's 8x8 grid
    # The same decoder shape, losses, optimizer, data and engine (steps, batch, seed) as the SVG demo.
    assert to_dict(vae.model.decoder) == {**to_dict(svg.model.decoder), "z_channels": channels}
    assert (vae.loss, vae.optimizer, vae.data) == (svg.loss, svg.optimizer, svg.data)
    assert {**to_dict(vae.engine), "out_dir": None} == {**to_dict(svg.engine), "out_dir": None}
    # The DiT recipe: configs/demo/diffusion.yaml with the VAE's folder, cache and run directory; the latent
    # transform differs (16 PCA directions of the SVG's 136 channels; the VAE's channels, per channel).
    dit_vae, dit_svg = (to_dict(load_config(DiffusionTrainConfig, DEMO_CONFIGS / name))
                        for name in (diffusion, "diffusion.yaml"))
    assert Path(dit_vae["autoencoder"]) == Path(vae.engine.out_dir) / "autoencoder"  # the folder the VAE run writes
    assert (dit_svg["latent_transform"]["kind"], dit_vae["latent_transform"]["kind"]) == ("pca", "per_channel")
    for config in (dit_vae, dit_svg):
        del config["autoencoder"], config["latent_cache"], config["engine"]["out_dir"], config["latent_transform"]
    assert dit_vae == dit_svg


def test_the_16_channel_vae_arm_is_the_4_channel_one_in_folders_of_its_own():
    vae, vae16 = (to_dict(load_config(AutoencoderTrainConfig, DEMO_CONFIGS / name))
                  for name in ("vae.yaml", "vae16.yaml"))
    assert vae16["model"] == {**vae["model"], "latent_channels": 16,
                              "decoder": {**vae["model"]["decoder"], "z_channels": 16}}
    dit, dit16 = (to_dict(load_config(DiffusionTrainConfig, DEMO_CONFIGS / name))
                  for name in ("vae_diffusion.yaml", "vae16_diffusion.yaml"))
    folders, folders16 = ({config["engine"]["out_dir"], config["latent_cache"], run["engine"]["out_dir"]}
                          for config, run in ((dit, vae), (dit16, vae16)))
    assert len(folders | folders16) == 6  # no run, cache or autoencoder is shared
    for config in (dit, dit16):
        del config["autoencoder"], config["latent_cache"], config["engine"]["out_dir"]
    assert dit16 == dit
