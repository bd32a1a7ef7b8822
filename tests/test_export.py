"""`svg-diffusion export`: the model folder of a training run's checkpoint, on real tiny runs (Fashion-MNIST, the
'tiny' frozen encoder): a decoder fine-tune and a diffusion run exported at their last step equal the folders the
runs wrote themselves, an earlier step exports that step, and a pipeline takes a fine-tuned decoder of the same
latent but refuses another autoencoder's.
"""

import dataclasses
from pathlib import Path

import pytest
import torch

from svg_diffusion.autoencoder import load_autoencoder
from svg_diffusion.cli import main
from svg_diffusion.diffusion.latent_transform import transform_state
from svg_diffusion.errors import SVGError
from svg_diffusion.export import export_run
from svg_diffusion.pipeline import SVGPipeline
from svg_diffusion.trainers.autoencoder import train_autoencoder
from svg_diffusion.trainers.diffusion import train_diffusion
from svg_diffusion.training import checkpoint_path, load_checkpoint, save_checkpoint

from test_autoencoder_train import assert_same_state, finetune_config
from test_autoencoder_train import tiny_config as autoencoder_config
from test_diffusion_train import tiny_config as diffusion_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist_dir) -> dict[str, Path]:
    """A base autoencoder, a decoder fine-tuned on its latent (checkpoints at steps 1-3), another base with other
    weights, and a 6-step diffusion run on the first base (checkpoints at 3 and 6)."""
    root = tmp_path_factory.mktemp("runs")
    base = train_autoencoder(autoencoder_config(root / "base", max_steps=2, checkpoint_every=2))
    other = train_autoencoder(autoencoder_config(root / "other", max_steps=2, checkpoint_every=2, seed=1))
    train_autoencoder(finetune_config(root / "decoder", base))
    config = diffusion_config(root / "diffusion", base)
    train_diffusion(dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=16)))
    return {"base": base, "other": other, "decoder": root / "decoder", "diffusion": root / "diffusion"}


def assert_same_pipeline(a: SVGPipeline, b: SVGPipeline) -> None:
    assert_same_state(a.transformer.state_dict(), b.transformer.state_dict())
    assert_same_state(a.autoencoder.state_dict(), b.autoencoder.state_dict())
    assert_same_state(transform_state(a.latent_transform), transform_state(b.latent_transform))
    assert a.class_names == b.class_names and a.sampling == b.sampling


def test_an_autoencoder_run_exports_the_model_it_ends_with(runs, tmp_path):
    # a run from scratch (its frozen encoder the seeded random 'tiny' one) and a decoder fine-tune
    exported = load_autoencoder(export_run(runs["base"].parent, tmp_path / "base"))
    assert_same_state(exported.state_dict(), load_autoencoder(runs["base"]).state_dict())
    exported = load_autoencoder(export_run(runs["decoder"], tmp_path / "last"))
    assert_same_state(exported.state_dict(), load_autoencoder(runs["decoder"] / "autoencoder").state_dict())
    # an earlier step: the fine-tuned decoder of that checkpoint, on the base's frozen parts
    early = load_autoencoder(export_run(runs["decoder"], tmp_path / "early", step=1))
    decoder = load_checkpoint(checkpoint_path(runs["decoder"], 1))["modules"]["autoencoder"]
    for name, value in early.state_dict().items():
        expected = decoder.get(name, load_autoencoder(runs["base"]).state_dict()[name])
        assert torch.equal(value, expected), name


def test_a_diffusion_run_exports_the_pipeline_it_ends_with(runs, tmp_path):
    finished = SVGPipeline.from_pretrained(runs["diffusion"] / "pipeline")
    assert_same_pipeline(SVGPipeline.from_pretrained(export_run(runs["diffusion"], tmp_path / "last")), finished)
    early = SVGPipeline.from_pretrained(export_run(runs["diffusion"], tmp_path / "early", step=3))
    shadow = load_checkpoint(checkpoint_path(runs["diffusion"], 3))["trainer"]["ema"]["shadow"]
    assert_same_state(early.transformer.state_dict(), shadow)


def test_a_checkpoint_without_class_names_takes_them_from_the_training_data(runs, tmp_path):
    """Checkpoints written before they held the class names (this repository's own older runs)."""
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text((runs["diffusion"] / "config.yaml").read_text())
    state = load_checkpoint(checkpoint_path(runs["diffusion"], 6))
    assert state["trainer"].pop("class_names")[7] == "Sneaker"
    save_checkpoint(state, checkpoint_path(run, 6))
    exported = SVGPipeline.from_pretrained(export_run(run, tmp_path / "pipeline"))
    assert_same_pipeline(exported, SVGPipeline.from_pretrained(runs["diffusion"] / "pipeline"))


def test_a_pipeline_takes_a_fine_tuned_decoder_of_the_same_latent_only(runs, tmp_path):
    decoder = runs["decoder"] / "autoencoder"
    swapped = SVGPipeline.from_pretrained(export_run(runs["diffusion"], tmp_path / "swapped", autoencoder=decoder))
    assert_same_state(swapped.autoencoder.state_dict(), load_autoencoder(decoder).state_dict())
    finished = SVGPipeline.from_pretrained(runs["diffusion"] / "pipeline")
    assert_same_state(swapped.transformer.state_dict(), finished.transformer.state_dict())
    images = swapped(["Bag"], generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.shape == (1, 16, 16, 3)
    with pytest.raises(SVGError, match="does not encode as"):
        export_run(runs["diffusion"], tmp_path / "refused", autoencoder=runs["other"])
    assert not (tmp_path / "refused").exists()


def test_export_command_and_its_errors(runs, tmp_path, capsys):
    assert main(["export", str(runs["diffusion"]), "--out", str(tmp_path / "p"), "--step", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "p")
    bad = {
        "no run": ([str(tmp_path), "--out", str(tmp_path / "x")], "config.yaml is missing"),
        "no step": ([str(runs["diffusion"]), "--out", str(tmp_path / "x"), "--step", "4"],
                    "has no checkpoint of step 4; it has steps [3, 6]"),
        "swap on an autoencoder run": ([str(runs["decoder"]), "--out", str(tmp_path / "x"), "--autoencoder",
                                        str(runs["base"])], "--autoencoder applies to diffusion runs only"),
        "other latent": ([str(runs["diffusion"]), "--out", str(tmp_path / "x"), "--autoencoder", str(runs["other"])],
                         "does not encode as"),
    }
    for name, (args, message) in bad.items():
        assert main(["export", *args]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("svg-diffusion export: error: ") and message in err[0], (name, err)
