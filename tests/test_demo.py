"""The README's main command on the shipped demo pipeline, the shipped files' hashes, and the export that ships them."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from svg_diffusion.autoencoder import SVGAutoencoder, load_autoencoder
from svg_diffusion.cli import main
from svg_diffusion.demo import (
    CHECKSUMS_FILE, export_demo_pipeline, read_checksums, run_demo, sha256, shipped_files,
)
from svg_diffusion.encoders import load_encoder, save_encoder
from svg_diffusion.errors import SVGError
from svg_diffusion.pipeline import SVGPipeline
from svg_diffusion.sample_writer import class_labels, sample_noise
from svg_diffusion.utils.shipped import DEMO_ENCODER_DIR, DEMO_PIPELINE_DIR

from test_pipeline import tiny_pipeline

DOCS = Path(__file__).resolve().parents[1] / "docs" / "demo.md"
GRID_PADDING = 2  # save_image_grid's default


@pytest.fixture(scope="module")
def shipped() -> SVGPipeline:
    return SVGPipeline.from_pretrained("demo-pipeline")


def test_demo_command_writes_a_labelled_class_grid(shipped, tmp_path, capsys):
    per_class = 3
    assert main(["demo", "--out-dir", str(tmp_path), "--steps", "4", "--per-class", str(per_class)]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    path = Path(last_line)
    assert path == tmp_path / "demo_grid.png" and path.is_file()

    grid = np.asarray(Image.open(path).convert("L")).astype(int)
    size = shipped.autoencoder.config.image_size
    rows, cols = len(shipped.class_names), per_class
    assert rows == 10
    height = rows * size + (rows + 1) * GRID_PADDING
    cells_width = cols * size + (cols + 1) * GRID_PADDING
    assert grid.shape[0] == height and grid.shape[1] > cells_width  # a label column on the left
    label_width = grid.shape[1] - cells_width
    labels = grid[:, :label_width]
    assert (labels < 128).any() and (labels < 128).mean() < 0.3  # dark text on white

    cells = [
        grid[GRID_PADDING + r * (size + GRID_PADDING):][:size, label_width + GRID_PADDING:][:, :cells_width - 2 * GRID_PADDING]
        for r in range(rows)
    ]
    for cell_row in cells:
        assert cell_row.std() > 20  # garments on black, not a flat image
    first_images = np.stack([row[:, :size] for row in cells])
    # Every row its own class: no two rows start with the same picture.
    differences = np.abs(first_images[:, None] - first_images[None]).mean(axis=(2, 3))
    assert differences[~np.eye(rows, dtype=bool)].min() > 5


def test_run_demo_is_deterministic_and_rejects_bad_input(shipped, tmp_path, capsys):
    first = np.asarray(Image.open(run_demo(tmp_path / "a", steps=2, per_class=1, pipeline=shipped, progress=False)))
    second = np.asarray(Image.open(run_demo(tmp_path / "b", steps=2, per_class=1, pipeline=shipped, progress=False)))
    np.testing.assert_array_equal(first, second)
    other_seed = np.asarray(Image.open(run_demo(tmp_path / "c", steps=2, per_class=1, seed=1, pipeline=shipped,
                                                progress=False)))
    assert np.abs(other_seed.astype(int) - first).max() > 0
    assert main(["demo", "--out-dir", str(tmp_path), "--per-class", "0"]) == 2
    assert "--per-class must be an integer >= 1, got 0" in capsys.readouterr().err


def test_the_shipped_demo_draws_in_one_step_and_by_default_in_25_euler_steps(shipped, tmp_path, capsys):
    assert (shipped.sampling.sampler, shipped.sampling.num_steps, shipped.sampling.guidance.scale) == ("euler", 25, 1.5)
    assert "mean_flow" in shipped.samplers and shipped.sampling.few_steps.max_steps == 4
    one_step = np.asarray(Image.open(run_demo(tmp_path / "one", steps=1, per_class=2, pipeline=shipped,
                                              progress=False)).convert("L")).astype(int)
    assert "20 samples (2 per class, 1 mean_flow steps, guidance 2, seed 0)" in capsys.readouterr().out
    euler = np.asarray(Image.open(run_demo(tmp_path / "euler", steps=5, per_class=2, pipeline=shipped,
                                           progress=False)).convert("L")).astype(int)
    assert "5 euler steps, guidance 1.5" in capsys.readouterr().out
    # The same noise through the one-step map and through 5 Euler steps: the same garments, not the same pixels.
    assert 0 < np.abs(one_step - euler).mean() < 30 and one_step.std() > 20


def test_bf16_sampling_stays_near_fp32_and_fp32_is_plain_fp32(shipped, one_thread):
    labels = class_labels(shipped)  # one image per class: the demo grid's first column
    noise = sample_noise(shipped, range(len(labels)), seed=0)
    latent = shipped(labels, latents=noise, output_type="latent")
    fp32 = shipped(labels, latents=noise, output_type="pt")
    with torch.no_grad():
        torch.testing.assert_close(fp32, shipped.autoencoder.decode(latent).clamp(-1, 1), rtol=0, atol=0)
    bf16 = shipped(labels, latents=noise, output_type="pt", precision="bf16")
    assert bf16.dtype == torch.float32
    difference = (bf16 - fp32).abs()
    # Measured on the 80-image demo grid (25 steps, seeds 0-2): mean 0.0017, max 0.05-0.19 in [-1, 1].
    assert 0 < difference.mean() < 0.005 and difference.max() < 0.3


def test_shipped_files_match_their_listed_and_documented_hashes(shipped):
    listed = read_checksums()
    assert sorted(listed) == sorted(name.as_posix() for name in shipped_files())
    for name, digest in listed.items():
        assert sha256(DEMO_PIPELINE_DIR / name) == digest, name
    # docs/demo.md quotes SHA256SUMS verbatim.
    assert (DEMO_PIPELINE_DIR / CHECKSUMS_FILE).read_text().strip() in DOCS.read_text()
    # The autoencoder shares the shipped demo encoder instead of holding a copy.
    assert not (DEMO_PIPELINE_DIR / "autoencoder" / "encoder").exists()
    shared = (DEMO_PIPELINE_DIR / "autoencoder" / json.loads(
        (DEMO_PIPELINE_DIR / "autoencoder" / "config.json").read_text())["encoder_folder"]).resolve()
    assert shared == DEMO_ENCODER_DIR.resolve()


def test_shipped_weights_have_names_that_work_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    named, folder = load_encoder("demo-pretrained").vit.state_dict(), load_encoder(DEMO_ENCODER_DIR).vit.state_dict()
    assert all(torch.equal(named[key], folder[key]) for key in folder)
    with pytest.warns(UserWarning, match="no weights: using a random initialization"):
        load_encoder("demo")  # the architecture, as the listing says
    assert isinstance(load_autoencoder("demo-pipeline"), SVGAutoencoder)
    assert main(["encoders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("demo-pretrained") and "pretrained weights" in lines[0]
    assert any(line.startswith("demo ") and "random weights" in line for line in lines)


def test_shipped_pipeline_loads_as_documented(shipped):
    assert shipped.class_names[:2] == ["T-shirt/top", "Trouser"] and len(shipped.class_names) == 10
    with safe_open(DEMO_PIPELINE_DIR / "transformer" / "model.safetensors", "pt") as weights:
        stored = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert "F16" in stored  # stored half precision ...
    assert all(p.dtype == torch.float32 for p in shipped.transformer.parameters())  # ... loaded as float32
    docs = DOCS.read_text()
    parameters = sum(p.numel() for p in shipped.transformer.parameters())
    assert re.search(rf"\b{parameters:,}\b", docs), f"docs/demo.md should state the DiT's {parameters:,} parameters"


def test_export_stores_half_precision_and_shares_the_encoder(tmp_path):
    pipe = tiny_pipeline()
    source = pipe.save_pretrained(tmp_path / "trained")
    encoder_dir = save_encoder(pipe.autoencoder.encoder, tmp_path / "assets" / "encoder")
    target = tmp_path / "assets" / "pipeline"
    (target / "stale").mkdir(parents=True)  # an older export's leftovers do not survive
    export_demo_pipeline(source, target, encoder_folder=encoder_dir)

    assert not (target / "stale").exists() and not (target / "autoencoder" / "encoder").exists()
    full = sum(f.stat().st_size for f in source.rglob("model.safetensors"))
    half = sum(f.stat().st_size for f in target.rglob("model.safetensors"))
    assert half < 0.6 * full  # the encoder is not copied and the rest is float16
    listed = read_checksums(target)
    assert "../encoder/model.safetensors" in listed
    assert all(sha256(target / name) == digest for name, digest in listed.items())

    exported = SVGPipeline.from_pretrained(target)
    exported_state = exported.transformer.state_dict()
    parameters = dict(pipe.transformer.named_parameters())
    for name, weight in pipe.transformer.state_dict().items():  # parameters rounded to float16, buffers exact
        expected = weight.half().float() if name in parameters else weight
        torch.testing.assert_close(exported_state[name], expected, rtol=0, atol=0)
    noise = torch.randn(pipe.noise_shape(4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(exported([0, 3, 5, 9], latents=noise, output_type="pt"),
                               pipe([0, 3, 5, 9], latents=noise, output_type="pt"), rtol=0, atol=2e-2)

    other = tiny_pipeline()
    torch.manual_seed(1)
    with torch.no_grad():
        other.autoencoder.encoder.vit.cls_token.add_(1.0)
    with pytest.raises(SVGError, match="does not hold this autoencoder's frozen encoder"):
        other.autoencoder.save_pretrained(tmp_path / "other", encoder_folder=encoder_dir)
