"""Speed of sampling and training, the plain path against the optimized ones (issue 6; docs/results.md).

    python benchmarks/speed.py [--device cpu|cuda] [--sizes S XL] [--threads 2] [--reps 3] [--sample-batch 4]
                                [--train-batch 8] [--skip sampling|training] [--no-compile] [--no-docs]

For each DiT size at the paper's latent shape (392x16x16) it measures

- sampling: images/s of 25 Euler steps with classifier-free guidance (scale 1.5 on every step);
- training: steps/s of the diffusion trainer's step (``trainers/diffusion.py``): latents (encoded online by the
  autoencoder, or read from the cache), normalized with the latent statistics, flow-matching MSE, backward,
  AdamW step. The EMA update is left out (it is the same in every path; its time is in the notes);

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
on them, and the differences compare paths, not models.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from svg_diffusion.autoencoder import AutoencoderConfig, SVGAutoencoder
from svg_diffusion.diffusion import (
    DiT,
    DiTConfig,
    FlowMatchingConfig,
    GuidanceConfig,
    compile_for_sampling,
    draw_flow_inputs,
    flow_matching_loss,
    guided_velocity,
    sample_euler,
    time_grid,
)
from svg_diffusion.diffusion.latents import LatentStatistics, encode_latents
from svg_diffusion.errors import SVGError
from svg_diffusion.training import EMA
from svg_diffusion.utils import atomic_path

LATENT_CHANNELS, LATENT_SIZE, IMAGE_SIZE = 392, 16, 256  # the paper's ImageNet-256 latents
NUM_CLASSES = 1000
SAMPLING_STEPS = 25
SAMPLING_SHIFT = 1 / 0.15  # the paper's sampling shift (public s = 0.15)
GUIDANCE = GuidanceConfig(scale=1.5)  # constant: both branches on every step
FLOW = FlowMatchingConfig()
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


# ---------------------------------------------------------------------------------------------------------
# Paths: each is a set of switches; the ladder adds one per row
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingPath:
    name: str
    batched_cfg: bool = False  # one forward of 2B (conditional + unconditional) instead of two of B
    inference_mode: bool = False  # torch.inference_mode instead of the samplers' torch.no_grad
    compiled: bool = False  # compile_for_sampling: inductor, weights frozen, dynamic batch on the CPU
    bf16: bool = False  # bfloat16 autocast (a looser tolerance than fp32)


PLAIN_SAMPLING = SamplingPath("plain: 2 CFG passes, fp32, eager")
BATCHED = replace(PLAIN_SAMPLING, name="batched CFG", batched_cfg=True)
INFERENCE = replace(BATCHED, name="+ inference_mode", inference_mode=True)
SAMPLING_PATHS = [
    PLAIN_SAMPLING,
    BATCHED,
    INFERENCE,
    replace(INFERENCE, name="+ compile (fp32)", compiled=True),
    replace(INFERENCE, name="+ compile + bf16", compiled=True, bf16=True),
]


@dataclass(frozen=True)
class TrainingPath:
    name: str
    cached_latents: bool = False  # read the cache instead of running the frozen encoder + residual ViT
    bf16: bool = False  # bfloat16 autocast on the DiT (online encoding stays fp32, as in the trainer)
    compiled: bool = False  # torch.compile of the DiT
    fused_adamw: bool = False  # AdamW(fused=True)


PLAIN_TRAINING = TrainingPath("plain: online encoding, fp32")
CACHED_BF16 = TrainingPath("cached latents + bf16", cached_latents=True, bf16=True)
TRAINING_PATHS = [
    PLAIN_TRAINING,
    TrainingPath("cached latents", cached_latents=True),
    TrainingPath("bf16", bf16=True),
    CACHED_BF16,
    replace(CACHED_BF16, name="+ compile + fused AdamW", compiled=True, fused_adamw=True),
]


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
    compile: bool = True  # False: no compiled row at all (--no-compile)


def default_settings(device: torch.device) -> Settings:
    if device.type == "cuda":
        return Settings(sample_batch={"S": 64, "XL": 32}, parity_steps={"S": 25, "XL": 25},
                        timed_steps={"S": 25, "XL": 25}, train_batch={"S": 128, "XL": 32}, train_iters=10,
                        reps={"S": 5, "XL": 5}, train_compile_sizes=("S", "XL"))
    # Every Euler step costs the same, so short timed runs (more of them, interleaved) average a shared
    # machine's load better than a few long ones. XL on 2 cores takes seconds per forward: one-step runs,
    # fewer repetitions, and no compiled training row (the compile takes many minutes and the fused
    # optimizer a second 5.4 GB optimizer state).
    return Settings(sample_batch={"S": 4, "XL": 2}, parity_steps={"S": 10, "XL": 1}, timed_steps={"S": 5, "XL": 1},
                    train_batch={"S": 8, "XL": 2}, train_iters=1, reps={"S": 5, "XL": 3}, train_compile_sizes=("S",))


# ---------------------------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------------------------


def dit_config(size: str) -> DiTConfig:
    return DiTConfig.from_size(size, in_channels=LATENT_CHANNELS, input_size=LATENT_SIZE, num_classes=NUM_CLASSES)


def build_dit(size: str, device: torch.device, seed: int = 0) -> DiT:
    """A DiT with random weights everywhere: adaLN-Zero's zero layers too, so outputs are not all zero."""
    torch.manual_seed(seed)
    model = DiT(dit_config(size))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.02)
    return model.to(device)


def forward_flops(size: str) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of the DiT per sample, counted on the meta device."""
    with torch.device("meta"):
        model = DiT(dit_config(size))
        x = torch.randn(1, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
        t, y = torch.rand(1), torch.zeros(1, dtype=torch.long)
    forward, training = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with forward:
        model(x, t, y)
    with training:
        model(x, t, y).square().mean().backward()
    return float(forward.get_total_flops()), float(training.get_total_flops())


def matmul_peak(device: torch.device) -> tuple[float, torch.dtype]:
    """(FLOP/s, dtype) of the faster of a bf16 and an fp32 n x n matmul on the device (on the CPU with the torch
    threads set): the peak that model FLOP utilization is relative to. bf16 on any recent GPU or CPU; a CPU
    without bf16 instructions runs it slower than fp32, and MFU must not then exceed 100%."""
    n, iters = (8192, 20) if device.type == "cuda" else (2048, 5)
    rates = {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        for _ in range(3):
            a @ b
        # The best of three timings: it is a peak, and one slowed timing (once 0.42 instead of 0.88 TFLOP/s on
        # an idle 2-core CPU) would double every MFU of the run.
        seconds = min(timed(lambda: [a @ b for _ in range(iters)], device)[0] for _ in range(3))
        rates[dtype] = iters * 2 * n**3 / seconds
    dtype = max(rates, key=rates.get)
    return rates[dtype], dtype


# ---------------------------------------------------------------------------------------------------------
# The measured computations
# ---------------------------------------------------------------------------------------------------------


def sample_latents(model: nn.Module, path: SamplingPath, noise: torch.Tensor, labels: torch.Tensor,
                   times: torch.Tensor) -> torch.Tensor:
    """Euler sampling with CFG over ``times`` as ``path`` says (``model`` is already compiled if it says so)."""
    grad_mode = torch.inference_mode() if path.inference_mode else torch.no_grad()
    with grad_mode, torch.autocast(noise.device.type, torch.bfloat16, enabled=path.bf16):
        velocity = guided_velocity(model, labels, GUIDANCE, len(times) - 1, batched=path.batched_cfg)
        return sample_euler(velocity, noise, times)


@dataclass
class TrainingBatch:
    images: torch.Tensor  # [B, 3, 256, 256] in [-1, 1]: what online encoding reads
    latents: torch.Tensor  # their float32 latents: what the cache holds
    labels: torch.Tensor


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, autoencoder: SVGAutoencoder,
                  stats: LatentStatistics, batch: TrainingBatch, path: TrainingPath,
                  generator: torch.Generator) -> torch.Tensor:
    """One step of the diffusion trainer's computation (without EMA); returns the loss.

    Online encoding runs in fp32 outside autocast, like the trainer (``encode_latents``): cached and online
    latents are the same numbers.
    """
    latents = batch.latents if path.cached_latents else encode_latents(autoencoder, batch.images)
    x = stats.normalize(latents)
    draws = draw_flow_inputs(tuple(x.shape), FLOW, generator, x.device)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=path.bf16):
        loss = flow_matching_loss(model, x, batch.labels, draws.noise, draws.t, draws.drop)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# ---------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


@dataclass
class Row:
    config: str
    path: str
    per_second: float  # images/s or steps/s
    mfu: float  # model FLOP utilization against the measured matmul peak
    ratio: float = 1.0
    max_abs_diff: float = 0.0
    spread: float = 0.0  # (max - min) / median of the repetitions
    warmup_s: float = 0.0  # the first, untimed run (includes compilation)
    peak_gib: float | None = None


@dataclass
class Measured:
    times: dict[str, list[float]]  # every repetition's seconds, per run
    peaks: dict[str, float]  # peak GPU memory (GiB) per run
    cpu_share: float  # CPU time this process got / wall time, over all timed repetitions (cores)


def measure(runs: dict[str, Callable[[], object]], reps: int, device: torch.device) -> Measured:
    """Time ``reps`` interleaved repetitions of all runs."""
    peaks: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    wall, cpu = time.perf_counter(), time.process_time()
    for rep in range(reps):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(timed(run, device)[0])
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
        print(f"  repetition {rep + 1}/{reps}: " + ", ".join(f"{t[-1]:.2f}s" for t in times.values()), flush=True)
    return Measured(times, peaks, (time.process_time() - cpu) / (time.perf_counter() - wall))


def rows_from(config: str, names: list[str], work: float, flops: float, peak_flops: float,
              warmup: dict[str, float], diffs: dict[str, float], times: dict[str, list[float]],
              peaks: dict[str, float]) -> list[Row]:
    """Rows from measured times: ``work`` images or steps per run, ``flops`` model FLOPs per run."""
    rows = []
    for name in names:
        median = statistics.median(times[name])
        spread = (max(times[name]) - min(times[name])) / median
        rows.append(Row(config, name, work / median, flops / median / peak_flops, max_abs_diff=diffs[name],
                        spread=spread, warmup_s=warmup[name], peak_gib=peaks.get(name)))
    for row in rows:
        row.ratio = row.per_second / rows[0].per_second
    return rows


# ---------------------------------------------------------------------------------------------------------
# The two benchmarks
# ---------------------------------------------------------------------------------------------------------


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
    rows = rows_from(size, list(times), batch, flops, peak_flops, warmup, diffs, times, measured.peaks)
    notes = [f"sampling {size}: batch {batch} per CFG branch; max |plain latents| = {plain.abs().max().item():.2f}"
             + cpu_share_note(measured, device)]
    if timed_steps != SAMPLING_STEPS or parity_steps != SAMPLING_STEPS:
        notes.append(f"sampling {size}: timed runs of {timed_steps} Euler step(s), images/s scaled to "
                     f"{SAMPLING_STEPS} steps; warm-up and differences after {parity_steps} step(s)")
    return rows, notes


def benchmark_training(size: str, device: torch.device, settings: Settings, peak_flops: float
                       ) -> tuple[list[Row], list[str]]:
    batch, iters = settings.train_batch[size], settings.train_iters
    paths = [p for p in TRAINING_PATHS if not p.compiled or (settings.compile and size in settings.train_compile_sizes)]
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
    optimizers = {fused: torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused)
                  for fused in {p.fused_adamw for p in paths}}

    def step(path: TrainingPath, seed: int) -> torch.Tensor:
        flow_generator = torch.Generator(device).manual_seed(seed)
        return training_step(compiled if path.compiled else model, optimizers[path.fused_adamw], autoencoder,
                             stats, data, path, flow_generator)

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
    diffs = {name: abs(loss - losses[PLAIN_TRAINING.name]) for name, loss in losses.items()}
    flops = forward_flops(size)[1] * batch * iters
    rows = rows_from(size, list(runs), iters, flops, peak_flops, warmup, diffs, measured.times, measured.peaks)
    notes = [(f"training {size}: batch {batch}; plain loss {losses[PLAIN_TRAINING.name]:.4f}; the trainer's EMA "
              f"update (not in the timed step) takes {ema_seconds:.3f} s; one AdamW step alone takes "
              f"{adamw_seconds[False]:.3f} s (default implementation) and {adamw_seconds[True]:.3f} s (fused=True)"
              + cpu_share_note(measured, device))]
    if not settings.compile:
        notes.append(f"training {size}: no compiled rows (--no-compile)")
    elif len(paths) < len(TRAINING_PATHS):
        notes.append(f"training {size}: no compiled row on {device.type} (compile time and a second optimizer state)")
    return rows, notes


def cpu_share_note(measured: Measured, device: torch.device) -> str:
    if device.type != "cpu":
        return ""
    return f"; the timed repetitions got {measured.cpu_share:.2f} cores of CPU time ({torch.get_num_threads()} threads)"


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


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        where = f"{cpu_model()}, {os.cpu_count()} cores, {threads} torch threads"
    return f"{where}; torch {torch.__version__}; Python {platform.python_version()}"


def cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')})"


def table(rows: list[Row], unit: str, gpu: bool) -> str:
    head = f"| config | path | {unit} | × plain | max abs diff | spread | warm-up s | MFU |"
    rule = "|---|---|---|---|---|---|---|---|"
    if gpu:
        head, rule = head + " peak GiB |", rule + "---|"
    lines = [head, rule]
    for r in rows:
        line = (f"| {r.config} | {r.path} | {r.per_second:.3g} | {r.ratio:.2f} | {r.max_abs_diff:.1e} | "
                f"{r.spread:.0%} | {r.warmup_s:.0f} | {r.mfu:.1%} |")
        if gpu:
            peak = "" if r.peak_gib is None else f"{r.peak_gib:.1f}"
            line += f" {peak} |"
        lines.append(line)
    return "\n".join(lines)


def report(device: torch.device, threads: int, size: str, sampling: list[Row], training: list[Row],
           notes: list[str], load: Load, peak_flops: float, peak_dtype: torch.dtype) -> str:
    gpu = device.type == "cuda"
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    header = (f"**{size}** — {machine(device, threads)}. Command: `{command}` ({load.minutes:.0f} min for {size}, "
              f"{time.strftime('%Y-%m-%d')}).")
    lines = [header]
    if sampling:
        lines += ["", f"Sampling ({SAMPLING_STEPS} Euler steps, CFG {GUIDANCE.scale} on every step):", "",
                  table(sampling, "images/s", gpu)]
    if training:
        lines += ["", "Training (the trainer's step without EMA):", "", table(training, "steps/s", gpu)]
    lines += ["", f"- machine load: {load.describe(threads)}"]
    lines.append(f"- MFU: DiT FLOPs (flop counter) / time / the measured matmul peak, {peak_flops / 1e12:.3g} TFLOP/s "
                 f"({str(peak_dtype).removeprefix('torch.')}); training counts forward + backward of the DiT only")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


class Load:
    """The machine's load over a stretch of the benchmark: load averages and the CPU time this process got."""

    def __init__(self) -> None:
        self.before, self.wall, self.cpu = os.getloadavg(), time.perf_counter(), time.process_time()

    def stop(self) -> Load:
        self.after = os.getloadavg()
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return self

    @property
    def minutes(self) -> float:
        return self.wall / 60

    def describe(self, threads: int) -> str:
        averages = ", ".join(f"{x:.1f}" for x in self.before), ", ".join(f"{x:.1f}" for x in self.after)
        return (f"load average (1, 5, 15 min) {averages[0]} before, {averages[1]} after on {os.cpu_count()} cores; "
                f"this process got {self.cpu / self.wall:.2f} cores of CPU time on average "
                f"({threads} threads asked)")


def write_docs(path: Path, key: str, text: str) -> None:
    """Replace the text between the markers of ``key`` (e.g. ``cpu:S``) in ``path``, or append a block."""
    begin, end = f"<!-- speed:{key}:begin -->", f"<!-- speed:{key}:end -->"
    doc = path.read_text() if path.exists() else "# Results\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + f"\n\n{block}\n"
    with atomic_path(path) as tmp:
        tmp.write_text(doc)


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
            write_docs(args.docs, f"{device.type}:{size}", text)
            print(f"written to {args.docs}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SVGError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
