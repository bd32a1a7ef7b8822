"""convert-official on random-initialized models saved in the public formats (docs/official.md), against independent
reference forwards of the public code (tests/public_reference.py): encode, decode and Euler+CFG sampling to
fp32 tolerance, the transformer without a YAML, and every kind of bad input as one clear SVGError."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml

import public_reference as ref
from svg_diffusion import SVGPipeline
from svg_diffusion.cli import main
from svg_diffusion.data import FashionMNIST
from svg_diffusion.diffusion import GuidanceConfig, guided_velocity, sample_euler, shift_from_public, time_grid
from svg_diffusion.encoders import VisionTransformer, get_config, load_vit
from svg_diffusion.errors import SVGError
from svg_diffusion.official import convert_official, public_time_grid

# Small public-format models: the "tiny" DINOv3 (dim 64, patch 4), 32² images -> 8x8 latents of 64 + 8 channels.
DINO, PATCH, IMAGE, GRID, RESIDUAL = "tiny", 4, 32, 8, 8
CHANNELS = 64 + RESIDUAL
DECODER = {"ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "z_channels": CHANNELS,
           "resolution": IMAGE, "out_ch": 3}
DIT = {"in_channels": CHANNELS, "grid": GRID, "hidden": 64, "depth": 2, "num_heads": 4, "num_classes": 10}
PUBLIC_SHIFT, STEPS, CFG = 0.15, 10, 3.0


def meta_dinov3_state(seed: int) -> dict[str, torch.Tensor]:
    """Random weights in Meta's DINOv3 layout for the tiny architecture (RoPE periods and masks as stored)."""
    generator = torch.Generator().manual_seed(seed)
    state = VisionTransformer(get_config(DINO)).state_dict()
    fixed = ("rope_embed.periods", "bias_mask")
    return {k: v if k.endswith(fixed) else v + 0.2 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def autoencoder_yaml(use_outnorm: bool = True, **ddconfig) -> dict:
    """The public autoencoder YAML layout (training-only sections included, as released)."""
    return {"ckpt_path": None, "model": {"base_learning_rate": 1e-4, "target": "ldm.models.dino_decoder.DinoDecoder",
            "params": {
                "monitor": "val/rec_loss", "embed_dim": 32,
                "lossconfig": {"target": "ldm.modules.losses.LPIPSWithDiscriminatorDecoder",
                               "params": {"disc_start": 5001, "disc_weight": 0.5}},
                "ddconfig": {"double_z": True, "in_channels": 3, "dropout": 0.0, **DECODER, **ddconfig},
                "dinoconfig": {"dinov3_location": "/your_dinov3_location", "model_name": DINO,
                               "weights": "/your_path/dinov3.pth"},
                "extra_vit_config": {"output_dim": RESIDUAL, "mask_ratio": 0.1, "use_outnorm": use_outnorm}}},
            "lightning": {"trainer": {"devices": 8, "precision": 32}}}


def autoencoder_state(dinov3: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {f"encoder.{k}": v for k, v in dinov3.items()}
    state |= ref.torchvision_vit_state(1, width=32, depth=2, mlp_dim=64, patch=PATCH, grid=GRID, out_dim=RESIDUAL)
    state |= ref.ldm_decoder_state(2, **DECODER)
    state["mask_token"] = torch.randn(1, RESIDUAL, 1) * 0.02
    state["norm_vit.weight"], state["norm_vit.bias"] = torch.ones(32 + RESIDUAL), torch.zeros(32 + RESIDUAL)
    state["loss.logvar"] = torch.zeros(())
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    return state


def lightning_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    return {"epoch": 39, "global_step": 100000, "pytorch-lightning_version": "2.1.0", "state_dict": state,
            "optimizer_states": [], "lr_schedulers": [], "callbacks": {}}


def transformer_yaml(feature_norm: bool = True, **params) -> dict:
    return {"basic": {"exp_name": "tiny", "shift": 0.4, "feature_norm": feature_norm, "image_size": IMAGE},
            "model": {"ckpt": None, "target": "models.models_SVG.DiT", "params": {
                "input_size": GRID, "num_classes": DIT["num_classes"], "patch_size": 1, "depth": DIT["depth"],
                "hidden_size": DIT["hidden"], "num_heads": DIT["num_heads"], "mlp_ratio": 4, "use_swiglu": False,
                "in_channels": CHANNELS, "qk_norm": True, **params}},
            "optim": {"base_learning_rate": 1e-4, "weight_decay": 0, "betas": [0.9, 0.999]}}


class PublicFiles:
    """The public release's files, written into a folder; ``write`` replaces one with a variant."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.dinov3_state = meta_dinov3_state(0)
        self.ae_state = autoencoder_state(self.dinov3_state)
        self.dit_state = ref.dit_state(3, **DIT)
        generator = torch.Generator().manual_seed(4)
        self.stats = {"dinov3_sp_mean": torch.randn(1, 1, CHANNELS, generator=generator),
                      "dinov3_sp_std": 0.5 + torch.rand(1, 1, CHANNELS, generator=generator)}
        self.write("dinov3.pth", self.dinov3_state)
        self.write("ae.ckpt", lightning_checkpoint(self.ae_state))
        self.write("ae.yaml", autoencoder_yaml())
        self.write("dit.pt", {"ema": self.dit_state})
        self.write("dit.yaml", transformer_yaml())
        self.write("stats.pt", self.stats)

    def write(self, name: str, content) -> str:
        path = self.folder / name
        if name.endswith(".yaml"):
            path.write_text(yaml.safe_dump(content))
        else:
            torch.save(content, path)
        return str(path)

    def args(self, out: Path, with_transformer: bool = True, **replace: str) -> list[str]:
        """CLI arguments for a conversion into ``out``; ``replace`` swaps files (value None drops the option)."""
        files = {"autoencoder": "ae.ckpt", "autoencoder-config": "ae.yaml", "dinov3": "dinov3.pth"}
        if with_transformer:
            files |= {"transformer": "dit.pt", "transformer-config": "dit.yaml", "stats": "stats.pt"}
        files |= replace
        argv = ["convert-official", "--out", str(out)]
        for option, name in files.items():
            if name is not None:
                argv += [f"--{option}", str(self.folder / name)]
        return argv

    def dino_tokens(self, x_dino: torch.Tensor) -> torch.Tensor:
        vit = load_vit(DINO, weights=self.folder / "dinov3.pth").eval()
        with torch.no_grad():
            return vit.forward_features(x_dino)["x_norm_patchtokens"]


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> PublicFiles:
    return PublicFiles(tmp_path_factory.mktemp("public"))


@pytest.fixture(scope="module")
def converted(public, tmp_path_factory) -> SVGPipeline:
    out = tmp_path_factory.mktemp("converted") / "svg"
    assert main(public.args(out)) == 0
    return SVGPipeline.from_pretrained(out)


@pytest.fixture(scope="module")
def images(fmnist_dir) -> torch.Tensor:
    dataset = FashionMNIST("test", image_size=IMAGE, root=fmnist_dir, limit=8)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max())


# ------------------------------------------------------------------------------------------------- parity


def test_encode_and_decode_match_the_public_autoencoder(converted, public, images):
    ae = converted.autoencoder
    assert ae.config.alignment == "batch" and converted.transformer is not None
    expected = ref.public_encode(public.ae_state, public.dino_tokens, images, PATCH, use_outnorm=True)
    with torch.no_grad():
        latent = ae.encode(images)
        decoded = ae.decode(expected)
    assert relative_error(latent, expected) < 1e-5
    # The residual really was rescaled to the features' statistics (the test would miss a skipped alignment).
    assert abs(float(latent[:, 64:].std() / latent[:, :64].std()) - 1) < 0.2
    assert relative_error(decoded, ref.ldm_decode(public.ae_state, expected)) < 1e-5


def test_use_outnorm_false_keeps_the_raw_residual(public, images, tmp_path):
    public.write("ae_plain.yaml", autoencoder_yaml(use_outnorm=False))
    out = convert_official(public.folder / "ae.ckpt", public.folder / "ae_plain.yaml", tmp_path / "plain")
    ae = SVGPipeline.from_pretrained(out).autoencoder
    assert ae.config.alignment == "none"
    expected = ref.public_encode(public.ae_state, public.dino_tokens, images, PATCH, use_outnorm=False)
    with torch.no_grad():
        assert relative_error(ae.encode(images), expected) < 1e-5


def test_euler_cfg_sampling_matches_the_public_sampler(converted, public):
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randn(3, GRID * GRID, CHANNELS, generator=generator)  # the public sampler's noise layout
    labels = torch.tensor([0, 4, 9])

    def public_model(x, t, y):
        return ref.public_dit(public.dit_state, x, t, y, DIT["num_heads"])

    with torch.no_grad():
        sample = ref.public_euler_sample(public_model, tokens, labels, DIT["num_classes"], STEPS, CFG, PUBLIC_SHIFT)
    mean, std = public.stats["dinov3_sp_mean"], public.stats["dinov3_sp_std"]
    expected = (sample * std + mean).permute(0, 2, 1).reshape(3, CHANNELS, GRID, GRID)  # basic.feature_norm

    noise = tokens.transpose(1, 2).reshape(3, CHANNELS, GRID, GRID)
    latent = converted(labels, latents=noise, num_steps=STEPS, guidance_scale=CFG,
                       shift=shift_from_public(PUBLIC_SHIFT), output_type="latent")
    assert relative_error(latent, expected) < 1e-5
    # The public grid itself, passed to our Euler sampler, leaves only batched-CFG / attention rounding.
    grid = public_time_grid(STEPS, PUBLIC_SHIFT)
    assert torch.equal(grid, ref.public_time_grid(STEPS, PUBLIC_SHIFT))
    ulp = torch.finfo(torch.float32).eps
    assert ((grid - time_grid(STEPS, shift_from_public(PUBLIC_SHIFT))).abs() <= ulp * grid).all()
    velocity = guided_velocity(converted.transformer, labels, GuidanceConfig(scale=CFG), STEPS)
    exact_grid = converted.latent_stats.denormalize(sample_euler(velocity, noise, grid))
    assert relative_error(exact_grid, expected) < 1e-5
    images = converted(labels, latents=noise, num_steps=STEPS, guidance_scale=CFG,
                       shift=shift_from_public(PUBLIC_SHIFT), output_type="pt")
    assert relative_error(images, ref.ldm_decode(public.ae_state, expected).clamp(-1, 1)) < 1e-5


def test_plain_model_without_yaml_takes_heads_from_the_table(public, tmp_path):
    # Width 384 -> 6 heads (the DiT table of docs/official.md); no YAML and no statistics: the model saw raw latents.
    state = ref.dit_state(6, in_channels=CHANNELS, grid=GRID, hidden=384, depth=1, num_heads=6, num_classes=10)
    public.write("dit_plain.pt", {"model": state})
    out = tmp_path / "plain"
    assert main(public.args(out, transformer="dit_plain.pt", **{"transformer-config": None, "stats": None})) == 0
    pipe = SVGPipeline.from_pretrained(out)
    assert pipe.transformer.config.num_heads == 6
    assert pipe.transformer.final_layer.linear.out_features == CHANNELS  # the learn_sigma half is gone
    assert torch.equal(pipe.latent_stats.mean, torch.zeros(CHANNELS))
    assert torch.equal(pipe.latent_stats.std, torch.ones(CHANNELS))
    x, t, y = torch.randn(2, CHANNELS, GRID, GRID), torch.tensor([0.1, 0.7]), torch.tensor([3, 10])
    tokens = x.flatten(2).transpose(1, 2)
    with torch.no_grad():
        expected = ref.public_dit(state, tokens, t, y, 6)[..., :CHANNELS].transpose(1, 2).reshape(x.shape)
        assert relative_error(pipe.transformer(x, t, y), expected) < 1e-5


def test_without_dinov3_the_checkpoint_copy_is_used(converted, public, images, tmp_path):
    out = convert_official(public.folder / "ae.ckpt", public.folder / "ae.yaml", tmp_path / "ae-only")
    ae = SVGPipeline.from_pretrained(out).autoencoder
    with torch.no_grad():
        torch.testing.assert_close(ae.encode(images), converted.autoencoder.encode(images), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- errors


def test_dinov3_other_than_the_checkpoints_copy_is_refused(public, tmp_path):
    public.write("other_dinov3.pth", meta_dinov3_state(9))
    assert "encoder.cls_token differs from" in convert_error(public, tmp_path, dinov3="other_dinov3.pth")


def convert_error(public: PublicFiles, tmp_path: Path, **replace: str) -> str:
    with pytest.raises(SVGError) as error:
        convert_official(**{k.replace("-", "_"): v for k, v in _paths(public, tmp_path, **replace).items()})
    message = str(error.value)
    assert "\n" not in message
    return message


def _paths(public: PublicFiles, tmp_path: Path, **replace: str) -> dict:
    argv = public.args(tmp_path / "out", **replace)[1:]
    return {argv[i][2:]: argv[i + 1] for i in range(0, len(argv), 2)}


def test_unknown_missing_and_misshapen_keys_are_named(public, tmp_path):
    extra = {**public.ae_state, "extra_vit.encoder.layers.encoder_layer_0.adapter.weight": torch.zeros(2)}
    public.write("extra.ckpt", lightning_checkpoint(extra))
    assert "unexpected keys: extra_vit.encoder.layers.encoder_layer_0.adapter.weight" in convert_error(
        public, tmp_path, autoencoder="extra.ckpt")
    missing = {k: v for k, v in public.ae_state.items() if k != "decoder.up.1.block.0.conv2.bias"}
    public.write("missing.ckpt", lightning_checkpoint(missing))
    assert "missing keys: decoder.up.1.block.0.conv2.bias" in convert_error(public, tmp_path, autoencoder="missing.ckpt")
    public.write("wide.yaml", autoencoder_yaml(ch=64))  # a YAML that does not fit the checkpoint
    message = convert_error(public, tmp_path, **{"autoencoder-config": "wide.yaml"})
    assert "shape mismatch: decoder.conv_in.weight (file (64, 72, 3, 3), expected (128, 72, 3, 3))" in message
    dit_extra = {**public.dit_state, "blocks.0.attn.rope.freqs": torch.zeros(4)}
    public.write("dit_extra.pt", {"ema": dit_extra})
    assert "unexpected keys: blocks.0.attn.rope.freqs" in convert_error(public, tmp_path, transformer="dit_extra.pt")


def test_yaml_mistakes_are_named(public, tmp_path):
    public.write("linear_attn.yaml", autoencoder_yaml(attn_type="linear"))
    assert "attn_type: only 'vanilla' is supported" in convert_error(
        public, tmp_path, **{"autoencoder-config": "linear_attn.yaml"})
    public.write("typo.yaml", autoencoder_yaml(num_res_block=2))
    assert "model.params.ddconfig.num_res_block: unknown key" in convert_error(
        public, tmp_path, **{"autoencoder-config": "typo.yaml"})
    public.write("classes.yaml", transformer_yaml(num_classes=1000))
    assert "model.params.num_classes is 1000 but" in convert_error(
        public, tmp_path, **{"transformer-config": "classes.yaml"})


def test_unreadable_and_unsafe_files_are_refused(public, tmp_path):
    assert "not found" in convert_error(public, tmp_path, autoencoder="absent.ckpt")
    (public.folder / "junk.ckpt").write_bytes(b"not a pickle")
    assert convert_error(public, tmp_path, autoencoder="junk.ckpt").endswith(
        "junk.ckpt: not a readable PyTorch file (damaged, or not written by torch.save)")
    public.write("few_stats.pt", {k: v[..., :10] for k, v in public.stats.items()})
    assert "statistics of 10 channels for a 72-channel latent" in convert_error(
        public, tmp_path, stats="few_stats.pt")
    assert "pass --stats" in convert_error(public, tmp_path, stats=None)


def test_a_checkpoint_that_needs_code_execution_is_refused_unless_trusted(public, converted, tmp_path, capsys):
    # A Lightning checkpoint with pickled hyper-parameters: torch.load(weights_only=True) refuses it.
    public.write("pickled.ckpt", {**lightning_checkpoint(public.ae_state), "hyper_parameters": argparse.Namespace(lr=1e-4)})
    assert main(public.args(tmp_path / "refused", autoencoder="pickled.ckpt")) == 2
    error = capsys.readouterr().err
    assert error.splitlines() == [
        f"svg-diffusion convert-official: error: {public.folder / 'pickled.ckpt'}: refused: loading this file needs "
        "code execution (it holds a pickled 'argparse.Namespace', not only tensors). Safe ways on: convert the public "
        "SVG checkpoints with `svg-diffusion convert-official`, adding --trust-pickle (Python: trust_pickle=True) "
        "only for a file you trust; re-save another trusted file's tensors alone (torch.save(model.state_dict()))"]
    assert "weights_only" not in error and not (tmp_path / "refused").exists()  # none of torch's retry advice

    assert main(public.args(tmp_path / "trusted", autoencoder="pickled.ckpt") + ["--trust-pickle"]) == 0
    trusted = SVGPipeline.from_pretrained(tmp_path / "trusted").autoencoder.state_dict()
    safe = converted.autoencoder.state_dict()  # of the same weights without the pickled object
    assert trusted.keys() == safe.keys() and all(torch.equal(trusted[k], safe[k]) for k in safe)


def test_cli_reports_one_line_and_exit_2(public, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("keep me")
    assert main(public.args(tmp_path / "out")) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"svg-diffusion convert-official: error: output folder {tmp_path / 'out'} already exists and is not empty"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]
