"""The command line as a user meets it: help for every subcommand, the main job, one-line errors, training logs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from svg_diffusion.cli import build_parser, main
from svg_diffusion.demo import DEMO_PIPELINE_DIR

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "svg_diffusion.cli", *args], capture_output=True, text=True)


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: svg-diffusion " + name in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_cli("encode", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "f.safetensors"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["svg-diffusion encode: error: image folder " + str(tmp_path / "missing") + " does not exist"]
    assert all(line.startswith("svg-diffusion") for line in result.stderr.splitlines()), result.stderr


def test_demo_writes_a_picture_and_prints_its_path_last(tmp_path):
    # The README's main command as a user runs it (fewer steps and samples; tests/test_demo.py checks the grid).
    result = run_cli("demo", "--out-dir", str(tmp_path), "--steps", "2", "--per-class", "2")
    assert result.returncode == 0, result.stderr
    picture = Path(result.stdout.strip().splitlines()[-1])
    assert picture == tmp_path / "demo_grid.png" and picture.is_file()
    from PIL import Image

    with Image.open(picture) as image:
        assert image.mode == "RGB" and image.height > 10 * 32  # one row per class


def test_training_prints_plain_progress_lines_when_stdout_is_not_a_terminal(tmp_path, fmnist_dir):
    # As under nohup, SLURM or CI: stdout is a pipe, where the progress bar switches itself off.
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "engine": {"out_dir": str(tmp_path / "run"), "max_steps": 1000, "global_batch_size": 8, "log_every": 2,
                   "checkpoint_every": 1000, "num_workers": 0, "device": "cpu"},
        "autoencoder": str(DEMO_PIPELINE_DIR),  # the shipped pipeline's, and a tiny transformer
        "data": {"source": "fashion_mnist", "root": str(fmnist_dir), "image_size": 32, "limit": 32},
        "model": {"size": "S", "overrides": {"hidden_size": 32, "depth": 1, "num_heads": 2}},
        "encode_batch_size": 32,
    }))
    with open(tmp_path / "stderr.txt", "w") as stderr:
        run = subprocess.Popen([sys.executable, "-m", "svg_diffusion.cli", "train", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            lines = [run.stdout.readline() for _ in range(2)]
            training = run.poll() is None  # the lines came while the run went on: flushed, not held to the end
        finally:
            run.kill()
            run.communicate()
    assert training, (tmp_path / "stderr.txt").read_text()[-2000:]
    for line, step in zip(lines, (2, 4)):
        pattern = rf"step {step}/1000  loss \d\S*  lr/transformer 0\.0001  \d+\.\d img/s  ETA \d+:\d\d:\d\d\n"
        assert re.fullmatch(pattern, line), line
