"""The demo quality benchmark's cheap parts (benchmarks/demo_quality.py): its rows and their NFE counts."""

import argparse
import inspect
import sys
from pathlib import Path

import pytest

from svg_diffusion.demo import run_demo
from svg_diffusion.diffusion import GuidanceConfig
from svg_diffusion.pipeline import SamplingDefaults, SVGPipeline

from test_pipeline import tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as running the script has it
import demo_quality  # noqa: E402
from demo_quality import Row, forwards_per_sample, parse_row  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def test_rows_parse_as_sampler_and_steps():
    assert parse_row("euler:25") == Row("euler", 25) and str(Row("mean_flow", 1)) == "mean_flow:1"
    for bad in ("euler", "euler:0", "euler:x", "eular:5", ":5", "euler:-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected SAMPLER:STEPS"):
            parse_row(bad)


def with_guidance(pipe: SVGPipeline, guidance: GuidanceConfig) -> SVGPipeline:
    return SVGPipeline(pipe.autoencoder, pipe.transformer, pipe.latent_transform, pipe.class_names,
                       SamplingDefaults(num_steps=4, shift=2.0, guidance=guidance))


def test_nfe_counts_the_forwards_of_each_guidance():
    pipe = tiny_pipeline()  # constant guidance 1.5
    assert forwards_per_sample(pipe, Row("euler", 4)) == 8  # conditional + unconditional branch per step
    assert forwards_per_sample(with_guidance(pipe, GuidanceConfig(scale=1.0)), Row("euler", 4)) == 4
    zero_init = GuidanceConfig(scale=1.5, mode="cfg_zero_star", zero_init_steps=1)
    assert forwards_per_sample(with_guidance(pipe, zero_init), Row("euler", 4)) == 6  # the zeroed step: none
    late = GuidanceConfig(scale=1.5, mode="late")  # guided on steps 3 and 4 of 4
    assert forwards_per_sample(with_guidance(pipe, late), Row("euler", 4)) == 6


def test_nfe_of_mean_flow_is_its_steps():
    sampling = SamplingDefaults(num_steps=2, sampler="mean_flow", shift=2.0, guidance=GuidanceConfig(scale=2.0))
    pipe = tiny_pipeline(sampling=sampling, interval_input=True, guidance_input=True)
    assert [forwards_per_sample(pipe, Row("mean_flow", steps)) for steps in (1, 2, 4)] == [1, 2, 4]


def test_speed_times_the_grid_of_the_demo_command():
    assert demo_quality.GRID_PER_CLASS == inspect.signature(run_demo).parameters["per_class"].default
