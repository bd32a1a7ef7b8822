"""Your own images, from any folder: a copy of the shipped demo configs trains on an image folder, run from
another working directory (and resumes from a third one with the run's saved config), then the result samples
and is evaluated, each step a separate `svg-diffusion`.

The copied configs keep their relative paths (``../../runs/...``, the named encoder ``demo-pretrained``): a
relative path in a config file is relative to the file's folder, a relative path in ``--set`` to the current
folder (docs/engine.md, "Config files").
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("discs", "bars")
PER_CLASS = 8
SHORT_RUN = ["--set", "engine.max_steps=2", "--set", "engine.global_batch_size=8", "--set", "engine.log_every=1"]


def write_image_folder(root: Path) -> None:
    """Two classes of 32x32 RGB pictures: bright discs and bright bars on dark, at random places."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:32, :32]
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            cy, cx = rng.integers(8, 24, size=2)
            shape = (y - cy) ** 2 + (x - cx) ** 2 < 36 if label == 0 else (abs(x - cx) < 3) & (abs(y - cy) < 10)
            colour = rng.integers(128, 256, size=3)
            pixels = np.where(shape[..., None], colour, rng.integers(0, 40, size=3)).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def copy_config(name: str, project: Path, images: str) -> Path:
    """configs/demo/<name> copied into project/configs/demo/, reading the image folder ``images`` (a path
    relative to the copy's folder) instead of Fashion-MNIST."""
    config = yaml.safe_load((REPO / "configs" / "demo" / name).read_text())
    config["data"] = {**config["data"], "source": "image_folder", "root": images}
    target = project / "configs" / "demo" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def svg_diffusion(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "svg_diffusion.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, f"svg-diffusion {args[0]}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_copied_configs_train_sample_and_evaluate_from_another_folder(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    write_image_folder(tmp_path / "my_images")
    elsewhere.mkdir()
    autoencoder_config = copy_config("autoencoder.yaml", project, "../../../my_images")
    diffusion_config = copy_config("diffusion.yaml", project, "../../../my_images")
    assert yaml.safe_load(autoencoder_config.read_text())["model"]["encoder"] == "demo-pretrained"

    svg_diffusion("train-autoencoder", "--config", str(autoencoder_config), *SHORT_RUN,
                  "--set", "preview_images=4", cwd=elsewhere)
    autoencoder = project / "runs" / "demo" / "autoencoder" / "autoencoder"  # the config's ../../runs/demo/...
    assert (autoencoder / "config.json").is_file()
    saved = yaml.safe_load((autoencoder.parent / "config.yaml").read_text())
    assert saved["engine"]["out_dir"] == str(autoencoder.parent)  # absolute paths: it resumes from anywhere
    assert saved["data"]["root"] == str(tmp_path / "my_images")
    svg_diffusion("train-autoencoder", "--config", str(autoencoder.parent / "config.yaml"), "--resume",
                  "--set", "engine.max_steps=3", cwd=tmp_path)
    assert (autoencoder.parent / "checkpoints" / "step_00000003.pt").is_file()

    # --set paths are relative to the current folder.
    svg_diffusion("cache-latents", "--config", str(diffusion_config), "--set", "latent_cache=cache", cwd=elsewhere)
    assert (elsewhere / "cache" / "index.json").is_file()
    pipeline = svg_diffusion("train", "--config", str(diffusion_config), *SHORT_RUN, "--set", "latent_cache=cache",
                             "--set", "preview.per_class=2", "--set", "preview.num_steps=2", cwd=elsewhere)
    pipeline = Path(pipeline.strip().splitlines()[-1])
    assert pipeline == project / "runs" / "demo" / "diffusion" / "pipeline"
    assert json.loads((pipeline / "model_index.json").read_text())["class_names"] == sorted(CLASSES)

    svg_diffusion("sample", "--pipeline", str(pipeline), "--out-dir", "samples", "--num", "8", "--steps", "2",
                  "--seed", "0", cwd=elsewhere)
    assert len(list((elsewhere / "samples").glob("*.png"))) == 8
    shutil.rmtree(project / "configs")  # what follows needs neither the configs nor the first folder
    scores = json.loads(svg_diffusion("evaluate", "fid,fd-encoder", "--real", "../my_images", "--fake", "samples",
                                      "--json", "--no-cache", cwd=elsewhere))
    assert scores["fid"] > 0 and scores["fd_encoder"] > 0, scores
