"""The command line as a user meets it: help for every subcommand, the main job, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from svg_diffusion.cli import build_parser, main

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
