"""Parity of the optimized sampling and training paths that benchmarks/speed.py times, against the plain path.

The benchmark's own functions (``sample_latents``, ``training_step``) run on a tiny DiT with random weights
(adaLN-Zero layers too, so outputs are not trivially zero) and, for training, on a tiny real autoencoder
encoding real Fashion-MNIST images. fp32 switches (batched CFG, inference_mode, compile, cached latents, fused
AdamW) must agree with the plain path to fp32 tolerance; bf16 autocast is held to the looser tolerance that
docs/results.md states: the max abs difference of the latents is under 3% of their std (sampling), the loss
within 1% and the gradient (all parameters as one vector) within 3% relative L2 error (training).
"""

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_autoencoder_model import calibrated, tiny_autoencoder

from svg_diffusion.data import FashionMNIST
from svg_diffusion.diffusion import DiT, DiTConfig, compile_for_sampling, time_grid, warm_start_mean_flow
from svg_diffusion.diffusion.latents import LatentStatistics, encode_latents

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as `python benchmarks/speed.py` has it
import speed  # noqa: E402
import speed_paths as paths  # noqa: E402

FP32 = {"rtol": 0, "atol": 2e-5}
LR = 1e-3
PATHS = {path.name: path for path in paths.SAMPLING_PATHS}


def tiny_dit(in_channels: int = 8, input_size: int = 8) -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(in_channels=in_channels, input_size=input_size, hidden_size=64, depth=2, num_heads=4,
                          num_classes=10))
    with torch.no_grad():  # random adaLN-Zero layers, as the benchmark's build_dit does
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                torch.nn.init.normal_(module.weight, std=0.05)
                torch.nn.init.normal_(module.bias, std=0.05)
    return model


@pytest.fixture(scope="module")
def sampling_case():
    model = tiny_dit().eval()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(3, 8, 8, 8, generator=generator)
    labels = torch.tensor([0, 4, 9])
    times = time_grid(10, shift=paths.SAMPLING_SHIFT)
    plain = paths.sample_latents(model, paths.PLAIN_SAMPLING, noise, labels, times)
    return model, noise, labels, times, plain


def test_command_line_sets_the_work_and_refuses_bad_values(capsys):
    settings = speed.settings_from(speed.parse_args(["--sizes", "XL", "--reps", "2", "--sample-batch", "1"]))
    assert settings.reps == {"XL": 2} and settings.sample_batch == {"XL": 1}
    assert settings.train_batch["XL"] == speed.default_settings(torch.device("cpu")).train_batch["XL"]
    for argv, message in ((["--train-batch", "0"], "--train-batch: must be at least 1, got 0"),
                          (["--device", "gpu"], "--device: invalid choice: 'gpu'")):
        with pytest.raises(SystemExit) as exit_info:
            speed.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_benchmark_builds_nonzero_adaln_models():
    model = paths.build_dit("S", torch.device("cpu"))
    assert all(block.adaLN_modulation[-1].weight.abs().sum() > 0 for block in model.blocks)
    assert model.final_layer.linear.weight.abs().sum() > 0


def test_batched_cfg_and_inference_mode_match_plain_sampling(sampling_case):
    model, noise, labels, times, plain = sampling_case
    assert plain.abs().max() > 1.0  # guided latents far from trivial
    for name in ("batched CFG", "+ inference_mode"):
        out = paths.sample_latents(model, PATHS[name], noise, labels, times)
        torch.testing.assert_close(out, plain, **FP32)


def test_bf16_sampling_within_documented_tolerance(sampling_case):
    model, noise, labels, times, plain = sampling_case
    out = paths.sample_latents(model, replace(PATHS["+ inference_mode"], bf16=True), noise, labels, times)
    assert out.dtype == torch.float32
    error = (out - plain).abs().max()
    assert 0 < error < 0.03 * plain.std()  # bf16 does change the numbers, within the stated bound


@pytest.mark.slow
def test_compiled_sampling_matches_plain(sampling_case):
    model, noise, labels, times, plain = sampling_case
    compiled = compile_for_sampling(model)
    out = paths.sample_latents(compiled, PATHS["+ compile (fp32)"], noise, labels, times)
    torch.testing.assert_close(out, plain, **FP32)
    # One graph for every batch size on the CPU: the unguided (B) and guided (2B) calls both hit it.
    with torch.inference_mode():
        torch.testing.assert_close(compiled(noise[:1], times[3:4], labels[:1]),
                                   model(noise[:1], times[3:4], labels[:1]), **FP32)
    bf16 = paths.sample_latents(compile_for_sampling(model), PATHS["+ compile + bf16"], noise, labels, times)
    assert (bf16 - plain).abs().max() < 0.03 * plain.std()


# ---------------------------------------------------------------------------------------------------------
# Training steps
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_case(fmnist_dir):
    dataset = FashionMNIST("train", image_size=32, root=fmnist_dir, limit=8)
    images = torch.stack([dataset[i][0] for i in range(8)])
    labels = torch.tensor([dataset[i][1] for i in range(8)])
    autoencoder = calibrated(tiny_autoencoder(), images)
    latents = encode_latents(autoencoder, images)
    stats = LatentStatistics(latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3)))
    batch = paths.TrainingBatch(images, latents, labels)
    return autoencoder, stats, batch


def run_step(case, path):
    """One benchmark training step of a fresh tiny DiT: (loss, gradients, updated weights)."""
    autoencoder, stats, batch = case
    model = tiny_dit(in_channels=autoencoder.latent_channels, input_size=autoencoder.latent_size)
    trained = torch.compile(model) if path.compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=path.fused_adamw)
    grads = {}
    hooks = [p.register_post_accumulate_grad_hook(lambda p, n=n: grads.__setitem__(n, p.grad.clone()))
             for n, p in model.named_parameters()]
    loss = paths.training_step(trained, optimizer, autoencoder, stats, batch, path, torch.Generator().manual_seed(3))
    for hook in hooks:
        hook.remove()
    return loss, grads, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_cached_latents_step_equals_online_step(training_case):
    loss, grads, weights = run_step(training_case, paths.PLAIN_TRAINING)
    assert loss > 0 and len(grads) == len(weights)
    cached_loss, cached_grads, cached_weights = run_step(training_case, replace(paths.PLAIN_TRAINING,
                                                                                cached_latents=True))
    assert cached_loss == loss
    for name in grads:
        assert torch.equal(cached_grads[name], grads[name]), name
        assert torch.equal(cached_weights[name], weights[name]), name


def test_bf16_training_step_within_documented_tolerance(training_case):
    loss, grads, _ = run_step(training_case, paths.PLAIN_TRAINING)
    bf16_loss, bf16_grads, _ = run_step(training_case, paths.CACHED_BF16)
    assert abs(bf16_loss - loss) < 0.01 * loss
    assert 0 < relative_error(bf16_grads, grads) < 0.03


def relative_error(grads: dict, reference: dict) -> float:
    """|g - g_ref| / |g_ref| over all gradients as one vector."""
    flat = torch.cat([grads[name].flatten() for name in reference])
    flat_reference = torch.cat([g.flatten() for g in reference.values()])
    return ((flat - flat_reference).norm() / flat_reference.norm()).item()


@pytest.mark.parametrize("path", [paths.MEAN_FLOW_RECIPE_TRAINING, paths.MEAN_FLOW_RECIPE_FD_TRAINING],
                         ids=["jvp", "finite_difference"])
def test_the_mean_flow_step_trains_the_warm_started_dit_against_its_teacher(training_case, path):
    autoencoder, stats, batch = training_case
    teacher = tiny_dit(in_channels=autoencoder.latent_channels, input_size=autoencoder.latent_size)
    model = warm_start_mean_flow(teacher, guidance_input=True)
    before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    loss = paths.training_step(model, optimizer, autoencoder, stats, batch, path, torch.Generator().manual_seed(3),
                               teacher=teacher)
    assert torch.isfinite(loss) and loss > 0
    assert all(torch.equal(p, before[name]) for name, p in teacher.named_parameters())  # the teacher stays
    assert not torch.equal(model.final_layer.linear.weight, before["final_layer.linear.weight"])


@pytest.mark.slow
def test_compiled_fused_training_step_matches_eager(training_case):
    fp32_cached = replace(paths.PLAIN_TRAINING, cached_latents=True)
    loss, grads, weights = run_step(training_case, fp32_cached)
    fast = replace(fp32_cached, compiled=True, fused_adamw=True)
    fast_loss, fast_grads, fast_weights = run_step(training_case, fast)
    torch.testing.assert_close(fast_loss, loss, **FP32)
    for name in grads:
        torch.testing.assert_close(fast_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        # Adam divides by sqrt(v) + 1e-8: a gradient that is zero in exact arithmetic (the q/k-norm biases,
        # which softmax ignores) is rounding noise that moves its weight by up to ~1% of lr either way.
        torch.testing.assert_close(fast_weights[name], weights[name], rtol=0, atol=0.05 * LR,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # The benchmark's optimized flow-matching row (bf16 too) against the plain path, at the bf16 tolerance.
    _, bf16_grads, _ = run_step(training_case, paths.OPTIMIZED_TRAINING)
    assert relative_error(bf16_grads, grads) < 0.03


# ---------------------------------------------------------------------------------------------------------
# The benchmark itself: FLOP count and a small end-to-end run
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["S", "XL"])
def test_flop_count_matches_the_transformer_arithmetic(size):
    """MFU's numerator: per sample and block, 24 D^2 FLOPs per token in the Linears (qkv, proj, MLP 4x) and
    4 N D in attention; plus the patch embedding and final layer; adaLN and embeddings are per sample (<1%)."""
    config = paths.dit_config(size)
    d, n, c = config.hidden_size, config.input_size**2, config.in_channels
    expected = config.depth * n * (24 * d * d + 4 * n * d) + 2 * n * c * d * 2
    forward, training = paths.forward_flops(size)
    assert expected <= forward < 1.01 * expected
    assert training == pytest.approx(3 * forward, rel=0.01)  # backward = 2x forward


def test_mean_flow_flop_count_includes_the_forward_mode_pass():
    """The MeanFlow step: the JVP pass (primal and tangent, 2 forwards and more: attention's products take the
    tangents of both factors) and the backward (2); the recipe adds the teacher's conditional and unconditional
    forwards (2). Without the tangent's operations the objective would count 3 forwards. With a finite difference
    instead of the JVP: the forward and backward (3) and both points of the rows with r != t (2 x 0.25)."""
    forward, _ = paths.forward_flops("S")
    objective = paths.mean_flow_flops("S", paths.MEAN_FLOW_TRAINING)
    assert 4 * forward < objective < 6 * forward
    recipe = paths.mean_flow_flops("S", paths.MEAN_FLOW_RECIPE_TRAINING)
    assert recipe == pytest.approx(objective + 2 * forward, rel=0.01)
    finite = paths.mean_flow_flops("S", paths.MEAN_FLOW_FD_TRAINING)
    assert finite == pytest.approx(3.5 * forward, rel=0.01)
    assert paths.mean_flow_flops("S", paths.MEAN_FLOW_RECIPE_FD_TRAINING) == pytest.approx(finite + 2 * forward,
                                                                                          rel=0.01)


def test_benchmark_runs_end_to_end_and_writes_its_tables(tmp_path, capsys):
    """The whole script on the CPU at its smallest settings (compiled rows out): both tables, the plain row as
    the baseline, the exact switches exact, an MFU for every row, and the block written between its markers."""
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\n<!-- speed:cpu:S:begin -->\nold\n<!-- speed:cpu:S:end -->\n\nafter\n")
    speed.main(["--sizes", "S", "--reps", "1", "--sample-batch", "1", "--train-batch", "1", "--threads", "1",
                "--no-compile", "--docs", str(docs)])
    text = docs.read_text()
    assert "old" not in text and text.endswith("\nafter\n") and text.count("speed:cpu:S:begin") == 1
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
                                          if line.startswith("| S |"))}
    assert set(rows) == {p.name for p in paths.SAMPLING_PATHS + paths.TRAINING_PATHS if not p.compiled}
    for name in (paths.PLAIN_SAMPLING.name, paths.PLAIN_TRAINING.name):
        assert rows[name][3] == "1.00" and float(rows[name][4]) == 0
    assert float(rows["batched CFG"][4]) < 1e-4 and float(rows["cached latents"][4]) == 0
    assert all(0 < float(cells[7].rstrip("%")) < 100 for cells in rows.values())  # MFU
    assert "the measured matmul peak" in text and "no compiled rows (--no-compile)" in text
    assert "written to" in capsys.readouterr().out
