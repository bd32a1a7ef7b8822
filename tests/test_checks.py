"""Every number a user gives is checked: config fields, CLI flags and the pipeline call's arguments.

NaN, infinity or a value out of range is refused before any work with one line that names it, gives the
allowed range and shows the value: ``ConfigError`` from a config file, ``ValueError`` from Python, exit
status 2 from the command line. The cases are collected from the code itself (every numeric field of every
config class reachable from a config file, every numeric flag of every command), so a new field or flag
without a check fails here.
"""

import argparse
import contextlib
import dataclasses
import functools
import io
import subprocess
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from svg_diffusion.autoencoder import AutoencoderConfig, VAEConfig
from svg_diffusion.cli import Number, build_parser, main
from svg_diffusion.config import ConfigError, from_dict
from svg_diffusion.data import DataConfig
from svg_diffusion.demo import DEMO_PIPELINE_DIR
from svg_diffusion.diffusion import DiTConfig, MeanFlowConfig
from svg_diffusion.encoders import ViTConfig
from svg_diffusion.pipeline import SamplingDefaults, SVGPipeline
from svg_diffusion.trainers.autoencoder import AutoencoderTrainConfig
from svg_diffusion.trainers.diffusion import DiffusionTrainConfig
from svg_diffusion.trainers.encoder import PretrainEncoderConfig
from svg_diffusion.training import EngineConfig

ENGINE = {"out_dir": "runs/x", "max_steps": 10, "global_batch_size": 8}
DATA = {"source": "fashion_mnist", "image_size": 256}
# What a user writes: the three training config files, the model section of train-autoencoder (SVG or VAE),
# the configs inside saved folders (pipeline sampling defaults, transformer and encoder config.json) and the
# MeanFlow objective's options.
ROOTS = [AutoencoderTrainConfig, AutoencoderConfig, VAEConfig, DiffusionTrainConfig, PretrainEncoderConfig,
         SamplingDefaults, DiTConfig, ViTConfig, MeanFlowConfig]
# The least a class needs besides its defaults.
REQUIRED = {
    EngineConfig: ENGINE, DataConfig: DATA, VAEConfig: {"kind": "vae", "latent_channels": 392},
    AutoencoderTrainConfig: {"engine": ENGINE, "data": DATA}, PretrainEncoderConfig: {"engine": ENGINE, "data": DATA},
    DiffusionTrainConfig: {"engine": ENGINE, "data": DATA, "autoencoder": "runs/autoencoder"},
}


@dataclass
class Case:
    id: str
    name: str  # what the message must name
    shown: str  # how it must show the bad value
    refusal: Callable[[], str]  # gives the error message


def _options(hint) -> tuple:
    """The types a field may hold, None aside (``int | None`` -> (int,))."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def config_classes() -> list[type]:
    found, todo = [], list(ROOTS)
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo += [t for hint in typing.get_type_hints(cls).values() for t in _options(hint) if dataclasses.is_dataclass(t)]
    return found


def config_refusal(cls: type, data: dict) -> Callable[[], str]:
    def refusal() -> str:
        with pytest.raises(ConfigError) as error:
            from_dict(cls, data)
        return str(error.value)

    return refusal


def config_cases() -> list[Case]:
    cases = []
    for cls in config_classes():
        hints, defaults = typing.get_type_hints(cls), from_dict(cls, REQUIRED.get(cls, {}))
        for field in dataclasses.fields(cls):
            for tp in _options(hints[field.name]):
                item = typing.get_args(tp)[0] if typing.get_origin(tp) in (list, tuple) else None
                default = getattr(defaults, field.name)
                if tp in (int, float) or item in (int, float):
                    bad_values = [float("nan"), float("inf")] if float in (tp, item) else [-1]
                    for bad in bad_values:
                        value, name = bad, field.name
                        if item is not None:  # a sequence: spoil its first item (of the default, if any)
                            fixed = typing.get_origin(tp) is tuple and typing.get_args(tp)[-1] is not Ellipsis
                            length = len(typing.get_args(tp)) if fixed else 1
                            rest = default if default is not None else [bad] * length
                            value, name = [bad, *rest[1:]], f"{field.name}[0]"
                        data = {**REQUIRED.get(cls, {}), field.name: value}
                        cases.append(Case(f"{cls.__name__}.{field.name}={bad}", name, str(bad),
                                          config_refusal(cls, data)))
    return cases


def cli_refusal(argv: list[str]) -> Callable[[], str]:
    def refusal() -> str:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            assert main(argv) == 2
        return stderr.getvalue()

    return refusal


def cli_cases() -> list[Case]:
    cases = []
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, sub in commands.items():
        needed = []  # placeholders for what the command requires: the checks come before anything is read
        for action in sub._actions:
            if not action.option_strings and action.dest != "help":
                needed.append("x")
            elif action.required:
                needed += [action.option_strings[-1], "x"]
        for group in sub._mutually_exclusive_groups:
            if group.required:
                needed += [group._group_actions[0].option_strings[-1], "x"]
        for action in sub._actions:
            if isinstance(action.type, Number):
                flag, bounds = action.option_strings[-1], action.type.bounds
                below = str(bounds.get("at_least", bounds.get("above", 0)) - 1)  # under every bound
                for bad in (["nan", "inf", below] if action.type.kind is float else [below]):
                    shown = str(action.type.kind(bad))
                    cases.append(Case(f"{command} {flag} {bad}", flag, shown,
                                      cli_refusal([command, *needed, flag, bad])))
    return cases


@functools.cache
def demo_pipeline() -> SVGPipeline:
    return SVGPipeline.from_pretrained(DEMO_PIPELINE_DIR)


def call_refusal(argument: str, value: float) -> Callable[[], str]:
    def refusal() -> str:
        with pytest.raises(ValueError) as error:
            demo_pipeline()(["Sneaker"], **{argument: value})
        return str(error.value)

    return refusal


def call_cases() -> list[Case]:
    bad = {"num_steps": [0, 2.5], "guidance_scale": [float("nan"), float("inf"), -1.0],
           "shift": [float("nan"), float("inf"), 0.0]}
    return [Case(f"pipe({name}={value})", name, str(value), call_refusal(name, value))
            for name, values in bad.items() for value in values]


@pytest.mark.parametrize("case", config_cases() + cli_cases() + call_cases(), ids=lambda case: case.id)
def test_every_number_a_user_gives_is_checked(case):
    message = case.refusal().strip()
    assert "\n" not in message, message
    assert f"{case.name} must be " in message and message.endswith(f", got {case.shown}"), message


@pytest.mark.parametrize("flag, value, error", [
    ("--cfg", "nan", "--cfg must be a finite number >= 0, got nan"),
    ("--cfg", "inf", "--cfg must be a finite number >= 0, got inf"),
    ("--sampler", "ddpm", "unknown sampler 'ddpm' (known: euler, heun, adams_bashforth, dpm_solver_2m, euler_maruyama,"
     " mean_flow)"),
])
def test_sample_fails_before_loading_with_one_line_and_no_progress_bar(tmp_path, flag, value, error):
    out = tmp_path / "grid.png"
    result = subprocess.run([sys.executable, "-m", "svg_diffusion.cli", "sample", "--pipeline", str(DEMO_PIPELINE_DIR),
                             "--per-class", "1", flag, value, "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"svg-diffusion sample: error: {error}"]  # no "sampling: 0%|" before it
    assert not out.exists()
