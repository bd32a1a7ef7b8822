"""Speed of sampling and training, the plain path against the optimized ones (issue 6; docs/results.md).

    python benchmarks/speed.py [--device cpu|cuda] [--sizes S XL] [--threads 2] [--reps 3] [--sample-batch 4]
                                [--train-batch 8] [--skip sampling|training] [--no-compile] [--no-docs]

For each DiT size at the paper's latent shape (392x16x16) it measures

- sampling: images/s of 25 Euler steps with classifier-free guidance (scale 1.5 on every step);
- training: steps/s of the diffusion trainer's step (``trainers/diffusion.py``): latents (encoded online by the
  autoencoder, or read from the cache), normalized with the latent statistics, flow-matching MSE, backward,
  AdamW step. The EMA update is left out (it is the same in every path; its time is in the notes). The last
  four rows are MeanFlow steps (``trainers/mean_flow.py``) on the same DiT: the objective alone, and the
  shipped recipe with a teacher, each with du/dt by the JVP and by a finite difference; a note gives their
  time against the flow-matching step they share every other switch with;

along a ladder of paths, each adding one switch to the row above, so every factor shows on its own. The
plain path is what the public code does: two CFG passes, fp32, eager, latents encoded online. Each row
gives the throughput, the ratio to the plain path, the largest absolute difference from the plain path's
output (sampling: the final latents from the same noise; training: the loss of one step from the same
weights and draws) and the spread (max - min) / median of the repetitions. Repetitions of the paths are
interleaved (path A, B, C, A, B, C, ...) and the median is reported, so a change of the machine's load hits
every path alike. The table also gives the model FLOP utilization (DiT FLOPs from ``torch.utils.flop_counter``
on the meta device, against the matmul peak measured on the same device and threads: bf16, or fp32 where that
is faster) and, on CUDA, the peak memory.

The table is printed and, unless ``--no-docs``, written into ``docs/results.md`` between the markers
``<!-- speed:<device>:begin -->`` and ``<!-- speed:<device>:end -->`` with the machine and the command.
Weights are random (adaLN-Zero layers included, so outputs are not trivially zero): speed does not depend
on them, and the differences compare paths, not models. ``speed_paths.py`` holds what is timed (the paths, the
models, the computations), ``speed_timing.py`` how (repetitions, the matmul peak, the load, the table).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from svg_diffusion.autoencoder import AutoencoderConfig, SVGAutoencoder
from svg_diffusion.diffusion import compile_for_sampling, time_grid, warm_start_mean_flow
from svg_diffusion.diffusion.latents import LatentStatistics, encode_latents
from svg_diffusion.errors import SVGError
from svg_diffusion.training import EMA

from reporting import DOCS, replace_block
from speed_paths import (
    CACHED_BF16, IMAGE_SIZE, LATENT_CHANNELS, LATENT_SIZE, MEAN_FLOW_FD_TRAINING, MEAN_FLOW_RECIPE_FD_TRAINING,
    MEAN_FLOW_RECIPE_TRAINING, MEAN_FLOW_TRAINING, NUM_CLASSES, PLAIN_SAMPLING, PLAIN_TRAINING, SAMPLING_PATHS,
    SAMPLING_SHIFT, SAMPLING_STEPS, TRAINING_PATHS, SamplingPath, TrainingBatch, TrainingPath, build_dit,
    forward_flops, mean_flow_flops, sample_latents, training_step,
)
from speed_timing import Load, Row, cpu_share_note, matmul_peak, measure, report, rows_from, timed

RESULTS = DOCS / "results.md"


@dataclass(frozen=True)
class Settings:
    """How much work each measurement does; defaults per device in :func:`default_settings`."""

    sample_batch: dict[str, int]  # per CFG branch
    parity_steps: dict[str, int]  # Euler steps of the warm-up run whose latents are compared with the plain path
    timed_steps: dict[str, int]  # Euler steps per timed run; throughput is scaled to 25 steps
    train_batch: dict[str, int]
    train_iters: int  # training steps per timed run
    reps: dict[str, int]  # timed runs per path, interleaved across paths
    train_compile_sizes: tuple[str, ...]  # sizes whose ladder includes the compiled training row
    train_mean_flow_sizes: tuple[str, ...]  # sizes whose ladder includes the MeanFlow rows (a second DiT and state)
    compile: bool = True  # False: no compiled row at all (--no-compile)


def default_settings(device: torch.device) -> Settings:
    if device.type == "cuda":
        return Settings(sample_batch={"S": 64, "XL": 32}, parity_steps={"S": 25, "XL": 25},
                        timed_steps={"S": 25, "XL": 25}, train_batch={"S": 128, "XL": 32}, train_iters=10,
                        reps={"S": 5, "XL": 5}, train_compile_sizes=("S", "XL"), train_mean_flow_sizes=("S", "XL"))
    # Every Euler step costs the same, so short timed runs (more of them, interleaved) average a shared
    # machine's load better than a few long ones. XL on 2 cores takes seconds per forward: one-step runs,
    # fewer repetitions, and no compiled training row (the compile takes many minutes and the fused
    # optimizer a second 5.4 GB optimizer state) nor MeanFlow rows (their DiT, gradients and optimizer state
    # are another 11 GB).
    return Settings(sample_batch={"S": 4, "XL": 2}, parity_steps={"S": 10, "XL": 1}, timed_steps={"S": 5, "XL": 1},
                    train_batch={"S": 8, "XL": 2}, train_iters=1, reps={"S": 5, "XL": 3}, train_compile_sizes=("S",),
                    train_mean_flow_sizes=("S",))


def benchmark_sampling(size: str, device: torch.device, settings: Settings, peak_flops: float
                       ) -> tuple[list[Row], list[str]]:
    batch, parity_steps, timed_steps = settings.sample_batch[size], settings.parity_steps[size], settings.timed_steps[size]
    print(f"sampling {size}: batch {batch} per CFG branch", flush=True)
    model = build_dit(size, device).eval()
    generator = torch.Generator(device).manual_seed(0)
    noise = torch.randn(batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=generator, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator, device=device)
    paths = [p for p in SAMPLING_PATHS if settings.compile or not p.compiled]
    runners = {path.name: compile_for_sampling(model) if path.compiled else model for path in paths}

    def run(path: SamplingPath, steps: int) -> torch.Tensor:
        return sample_latents(runners[path.name], path, noise, labels, time_grid(steps, SAMPLING_SHIFT, device))

    warmup, outputs = {}, {}  # the warm-up run (compilation included) gives the latents compared
    for path in paths:
        print(f"  warm-up ({parity_steps} steps): {path.name}", flush=True)
        warmup[path.name], outputs[path.name] = timed(lambda path=path: run(path, parity_steps), device)
    plain = outputs[PLAIN_SAMPLING.name].float()
    diffs = {name: (out.float() - plain).abs().max().item() for name, out in outputs.items()}
    measured = measure({p.name: lambda p=p: run(p, timed_steps) for p in paths}, settings.reps[size], device)
    # Every step costs the same (CFG runs both branches throughout): scale the runs' times to 25 steps.
    times = {name: [t * SAMPLING_STEPS / timed_steps for t in ts] for name, ts in measured.times.items()}
    flops = forward_flops(size)[0] * 2 * batch * SAMPLING_STEPS
    rows = rows_from(size, list(times), batch, dict.fromkeys(times, flops), peak_flops, warmup, diffs, times,
                     measured.peaks)
    notes = [f"sampling {size}: batch {batch} per CFG branch; max |plain latents| = {plain.abs().max().item():.2f}"
             + cpu_share_note(measured, device)]
    if timed_steps != SAMPLING_STEPS or parity_steps != SAMPLING_STEPS:
        notes.append(f"sampling {size}: timed runs of {timed_steps} Euler step(s), images/s scaled to "
                     f"{SAMPLING_STEPS} steps; warm-up and differences after {parity_steps} step(s)")
    return rows, notes


def training_paths(size: str, settings: Settings) -> list[TrainingPath]:
    """The training ladder of ``size``: without the rows the settings leave out at that size."""
    compiled = settings.compile and size in settings.train_compile_sizes
    return [p for p in TRAINING_PATHS if (compiled or not p.compiled)
            and (size in settings.train_mean_flow_sizes or not p.mean_flow)]


def benchmark_training(size: str, device: torch.device, settings: Settings, peak_flops: float
                       ) -> tuple[list[Row], list[str]]:
    batch, iters = settings.train_batch[size], settings.train_iters
    paths = training_paths(size, settings)
    print(f"training {size}: batch {batch}, {iters} step(s) per repetition", flush=True)
    torch.manual_seed(0)  # the random autoencoder, so the plain loss is the same in every run
    with warnings.catch_warnings():  # "random weights" for DINOv3: fine for timing
        warnings.simplefilter("ignore")
        autoencoder = SVGAutoencoder.from_config(AutoencoderConfig()).to(device).eval()
    generator = torch.Generator(device).manual_seed(0)
    images = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator, device=device) * 2 - 1
    autoencoder.estimate_alignment_statistics([images])
    latents = encode_latents(autoencoder, images)
    stats = LatentStatistics(latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3)))
    data = TrainingBatch(images, latents, torch.randint(0, NUM_CLASSES, (batch,), generator=generator, device=device))
    model = build_dit(size, device).train()
    ema_seconds = ema_update_seconds(model, device)
    adamw_seconds = adamw_step_seconds(model, device)
    compiled = torch.compile(model) if any(p.compiled for p in paths) else None
    # The MeanFlow rows train a warm-started copy; the distilled one distils ``model`` (whose weights, trained by
    # the other rows, only set the numbers, not the work).
    mean_flow_model = warm_start_mean_flow(model, guidance_input=True) if any(p.mean_flow for p in paths) else None
    optimizers = {(mean_flow, fused): torch.optim.AdamW((mean_flow_model if mean_flow else model).parameters(),
                                                         lr=1e-4, weight_decay=0.0, fused=fused)
                  for mean_flow, fused in {(p.mean_flow, p.fused_adamw) for p in paths}}

    def step(path: TrainingPath, seed: int) -> torch.Tensor:
        flow_generator = torch.Generator(device).manual_seed(seed)
        trained = mean_flow_model if path.mean_flow else compiled if path.compiled else model
        return training_step(trained, optimizers[path.mean_flow, path.fused_adamw], autoencoder, stats, data, path,
                             flow_generator, teacher=model)

    # Parity: the loss of each path from the same weights and draws (the optimizers get zero-lr steps). This
    # first step of each path is its warm-up time (compilation included); one more warm-up run follows.
    for optimizer in optimizers.values():
        optimizer.param_groups[0]["lr"] = 0.0
    warmup, losses = {}, {}
    for p in paths:
        print(f"  warm-up: {p.name}", flush=True)
        warmup[p.name], loss = timed(lambda p=p: step(p, seed=1).item(), device)
        losses[p.name] = loss
    for optimizer in optimizers.values():
        optimizer.param_groups[0]["lr"] = 1e-4
    runs = {p.name: lambda p=p: [step(p, seed=2 + i) for i in range(iters)] for p in paths}
    for run in runs.values():
        run()
    measured = measure(runs, settings.reps[size], device)
    diffs = {p.name: None if p.mean_flow else abs(losses[p.name] - losses[PLAIN_TRAINING.name]) for p in paths}
    flops = {p.name: (mean_flow_flops(size, p) if p.mean_flow else forward_flops(size)[1]) * batch * iters
             for p in paths}
    rows = rows_from(size, list(runs), iters, flops, peak_flops, warmup, diffs, measured.times, measured.peaks)
    notes = [(f"training {size}: batch {batch}; plain loss {losses[PLAIN_TRAINING.name]:.4f}; the trainer's EMA "
              f"update (not in the timed step) takes {ema_seconds:.3f} s; one AdamW step alone takes "
              f"{adamw_seconds[False]:.3f} s (default implementation) and {adamw_seconds[True]:.3f} s (fused=True)"
              + cpu_share_note(measured, device))]
    if mean_flow_model is not None:
        notes.append(mean_flow_note(size, rows, flops))
    else:
        notes.append(f"training {size}: no MeanFlow rows on {device.type} (a second DiT with its optimizer state)")
    if not settings.compile:
        notes.append(f"training {size}: no compiled rows (--no-compile)")
    elif not any(p.compiled for p in paths):
        notes.append(f"training {size}: no compiled row on {device.type} (compile time and a second optimizer state)")
    return rows, notes


def mean_flow_note(size: str, rows: list[Row], flops: dict[str, float]) -> str:
    """The MeanFlow steps' time and FLOPs against the flow-matching step with the same switches (same run)."""
    speed = {row.path: row.per_second for row in rows}
    base = CACHED_BF16.name

    def cost(name: str) -> str:
        return f"{speed[base] / speed[name]:.2f}x the time ({flops[name] / flops[base]:.2f}x the FLOPs)"

    return (f"training {size}: against the flow-matching step with cached latents + bf16 (interleaved in this "
            f"run), a MeanFlow step takes {cost(MEAN_FLOW_TRAINING.name)} for the objective alone (JVP pass and "
            f"backward) and {cost(MEAN_FLOW_RECIPE_TRAINING.name)} for the shipped recipe (+ the teacher's guided "
            f"velocity, 2 forwards); with du/dt by a finite difference (a forward and backward, and an fp32 "
            f"forward of both points of the rows with r != t), {cost(MEAN_FLOW_FD_TRAINING.name)} and "
            f"{cost(MEAN_FLOW_RECIPE_FD_TRAINING.name)}; their losses are another objective's (no difference shown)")


def ema_update_seconds(model: nn.Module, device: torch.device) -> float:
    """Median time of the trainer's EMA update of ``model`` (its shadow is freed on return)."""
    ema = EMA(model, 0.9999)
    return statistics.median(timed(lambda: ema.update(model), device)[0] for _ in range(3))


def adamw_step_seconds(model: nn.Module, device: torch.device) -> dict[bool, float]:
    """Median time of an AdamW step over ``model``'s parameters, by ``fused`` (False: the default, a for-loop on
    the CPU and foreach on CUDA). The steps have lr 0, so the weights stay; the gradients and states are freed."""
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    seconds = {}
    for fused in (False, True):  # one optimizer state at a time: XL's is 5.4 GB
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0, fused=fused)
        optimizer.step()  # allocates the state
        seconds[fused] = statistics.median(timed(optimizer.step, device)[0] for _ in range(3))
        del optimizer
    model.zero_grad(set_to_none=True)
    return seconds


def reset_compiled() -> None:
    """Drop compiled graphs (they hold the frozen weights) once a benchmark's models are gone."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    parser.add_argument("--sizes", nargs="+", default=["S", "XL"], choices=["S", "B", "L", "XL"])
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--reps", type=positive_int, help="timed repetitions per path (default: 5, XL on CPU 3)")
    parser.add_argument("--sample-batch", type=positive_int, help="sampling batch per CFG branch (default: S 4, XL 2 on CPU)")
    parser.add_argument("--train-batch", type=positive_int, help="training batch (default: S 8, XL 2 on CPU)")
    parser.add_argument("--skip", choices=["sampling", "training"], help="leave one benchmark out")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    parser.add_argument("--docs", type=Path, default=RESULTS, help="the results file to update")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """The device's default settings with the command line's --reps, --sample-batch and --train-batch."""
    settings = default_settings(torch.device(args.device))
    if args.no_compile:
        settings = replace(settings, compile=False)
    for option, value in ("reps", args.reps), ("sample_batch", args.sample_batch), ("train_batch", args.train_batch):
        if value is not None:
            settings = replace(settings, **{option: {size: value for size in args.sizes}})
    return settings


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SVGError("--device cuda: no CUDA device is available (use --device cpu)")
    torch.set_num_threads(args.threads)
    settings = settings_from(args)
    peak_flops, peak_dtype = matmul_peak(device)
    for size in args.sizes:  # each size's block is written as soon as it is measured
        load = Load()
        sampling, training, notes = [], [], []
        if args.skip != "sampling":
            sampling, notes = benchmark_sampling(size, device, settings, peak_flops)
            reset_compiled()
        if args.skip != "training":
            training, training_notes = benchmark_training(size, device, settings, peak_flops)
            notes += training_notes
            reset_compiled()
        text = report(device, args.threads, size, sampling, training, notes, load.stop(), peak_flops, peak_dtype)
        print(text, flush=True)
        if not args.no_docs:
            key = f"{device.type}:{size}"
            replace_block(args.docs, f"<!-- speed:{key}:begin -->", f"<!-- speed:{key}:end -->", text, heading="")
            print(f"written to {args.docs}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SVGError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
