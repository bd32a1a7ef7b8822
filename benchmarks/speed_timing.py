"""How benchmarks/speed.py times and reports: interleaved repetitions, the matmul peak that model FLOP
utilization is relative to, the machine and its load, and the markdown table."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from speed_paths import GUIDANCE, SAMPLING_STEPS


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
    max_abs_diff: float | None = 0.0  # None: another objective, no parity to show
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


def rows_from(config: str, names: list[str], work: float, flops: dict[str, float], peak_flops: float,
              warmup: dict[str, float], diffs: dict[str, float | None], times: dict[str, list[float]],
              peaks: dict[str, float]) -> list[Row]:
    """Rows from measured times: ``work`` images or steps per run, ``flops`` model FLOPs per run of each."""
    rows = []
    for name in names:
        median = statistics.median(times[name])
        spread = (max(times[name]) - min(times[name])) / median
        rows.append(Row(config, name, work / median, flops[name] / median / peak_flops, max_abs_diff=diffs[name],
                        spread=spread, warmup_s=warmup[name], peak_gib=peaks.get(name)))
    for row in rows:
        row.ratio = row.per_second / rows[0].per_second
    return rows


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


def cpu_share_note(measured: Measured, device: torch.device) -> str:
    if device.type != "cpu":
        return ""
    return f"; the timed repetitions got {measured.cpu_share:.2f} cores of CPU time ({torch.get_num_threads()} threads)"


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
        diff = "–" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        line = (f"| {r.config} | {r.path} | {r.per_second:.3g} | {r.ratio:.2f} | {diff} | "
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
                 f"({str(peak_dtype).removeprefix('torch.')}); training counts forward + backward of the DiT only (MeanFlow "
                 f"rows: their whole step, the JVP pass and the teacher's forwards included)")
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
