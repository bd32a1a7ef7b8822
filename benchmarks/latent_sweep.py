"""The latent sweep: the demo DiT's recipe on the whitened top-k PCA latent, k x training shift, generation FID.

Every point is the reproduction's SVG arm (configs/demo/diffusion.yaml: the demo v1 autoencoder, its latent
cache, the DiT of hidden 256 x depth 6, patch 2, lr 5e-4, batch 128) with two settings changed,
``latent_transform.components=k`` (k = ``all``: as many as the latent has channels, a whitening rotation that
drops nothing) and ``flow.shift=s`` (the training time shift; ``auto`` is the dimension rule of
docs/diffusion.md, sqrt(positions x k / 4096)). Each point trains its own DiT run under ``--out`` (resumable: a
rerun continues it) and is sampled with the config's sampler (25 Euler steps, CFG 1.5, sampling shift 2, bf16):
FID of ``--samples`` images (classes balanced, sample i from seed (0, i)) against the first ``--reference``
Fashion-MNIST test images after each of ``--steps``. The point k = 16, shift 1 is the SVG arm itself: with
``--svg-checkpoints`` (a run of that recipe, e.g. runs/demo/dit_pca16) its checkpoints are borrowed, as the
reproduction does (benchmarks/reproduction.py, "Borrowed SVG checkpoints"; the arm's autoencoder folder must
hold the demo v1 autoencoder: the script says how to make it when it is missing).

    # one process per core, each its share of the points, one results.json; rerun a line to continue it
    S="--out runs/sweep --svg-checkpoints /work/dit_pca16_early"
    OMP_NUM_THREADS=1 nohup python benchmarks/latent_sweep.py $S --part 0/2 > runs/logs/sweep_0.log 2>&1 &
    OMP_NUM_THREADS=1 nohup python benchmarks/latent_sweep.py $S --part 1/2 > runs/logs/sweep_1.log 2>&1 &
    python benchmarks/latent_sweep.py --out runs/sweep --docs     # the table and plot into docs/results.md

Points run shift by shift (``--shifts`` in order), k by k within each, so a partial run has whole rows. One point
at 1000 steps costs ~11 min of training and ~8 min of FID on one thread.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch

from svg_diffusion.autoencoder import load_autoencoder
from svg_diffusion.diffusion.flow import dimension_shift

from reporting import DOCS, IMAGES, Results, replace_block
from reproduction import FID
from reproduction_runs import VARIANTS, arm_config, borrowed_run, checkpoint_at, log, pipeline_at, require_autoencoder, shown

BASE = "SVG"  # the reproduction's arm whose recipe every point changes
BASE_POINT = ("16", "1")  # (components, shift) of configs/demo/diffusion.yaml: the base arm itself
RESULTS_VERSION = 1
START, END = "<!-- latent-sweep:start -->", "<!-- latent-sweep:end -->"
PLOT = IMAGES / "latent_sweep.png"


def point_arm(components: str, shift: str, latent_channels: int) -> str:
    """The reproduction arm of a point: the base arm, or a variant of it (registered here) with k and the shift."""
    if (components, shift) == BASE_POINT:
        return BASE
    name = f"k={components}, shift={shift}"
    k = latent_channels if components == "all" else int(components)
    VARIANTS[name] = {"base": BASE, "overrides": [f"latent_transform.components={k}", f"flow.shift={shift}"]}
    return name


def same_as(components: str, shift: str, shifts: list[str], latent_size: int, latent_channels: int) -> str | None:
    """The numeric shift of ``shifts`` that an ``auto`` point's shift equals (k = 64 on 8x8: auto is 1), if any."""
    if shift != "auto":
        return None
    k = latent_channels if components == "all" else int(components)
    auto = dimension_shift(latent_size * latent_size, k)
    return next((s for s in shifts if s != "auto" and math.isclose(float(s), auto)), None)


def measure(args, results: Results, points: list[tuple[str, str]], latent_size: int, latent_channels: int) -> None:
    fid = None
    for components, shift in points:
        arm = point_arm(components, shift, latent_channels)
        twin = same_as(components, shift, args.shifts, latent_size, latent_channels)
        for step in args.steps:
            if results.get("fid", components, shift, str(step)) is not None:
                continue
            if twin is not None:  # the same run as the numeric shift's point: measured there
                results.put({"same_as": twin}, "fid", components, shift, str(step))
                continue
            fid = fid or FID(args)
            checkpoint = checkpoint_at(arm, step, args, results)
            pipe = pipeline_at(arm, checkpoint, args)
            sampling = pipe.sampling
            result = fid(pipe, sampling.num_steps, sampling.guidance.scale)
            positions = pipe.transformer.config.input_size ** 2
            trained = arm_config(arm, args.out, step).flow.resolved(positions, pipe.latent_transform.channels).shift
            results.put({**result, "checkpoint": shown(checkpoint), "components": pipe.latent_transform.channels,
                         "training_shift": trained}, "fid", components, shift, str(step))
            log(f"k={components}, shift={shift}, step {step}: FID {result['fid']:.2f}")


def cell(point: dict | None) -> str:
    if point is None:
        return ""
    return f"= shift {point['same_as']}" if "same_as" in point else f"{point['fid']:.1f}"


def write_docs(results: Results, page: Path = DOCS / "results.md", image: Path = PLOT) -> None:
    """The sweep's tables (one per DiT step) and its plot (FID vs k at the last step) into ``page``'s block."""
    measured = results.get("fid") or {}
    if not measured:
        raise SystemExit(f"{results.path}: nothing measured yet")
    steps = sorted({int(s) for shifts in measured.values() for points in shifts.values() for s in points})
    components = sorted(measured, key=lambda k: (k == "all", int(k) if k != "all" else 0))
    shifts = sorted({s for shifts in measured.values() for s in shifts}, key=lambda s: (s == "auto", s))
    setting = results.get("setting") or {}
    lines = [f"Generation FID ({setting.get('samples')} samples, 25 Euler steps, CFG 1.5, sampling shift 2) of the "
             f"demo DiT recipe trained on the whitened top-k PCA latent at each training shift "
             f"(`benchmarks/latent_sweep.py`; {setting.get('machine')}, one thread per process, "
             f"{setting.get('date')}). `auto` is sqrt(64 k / 4096); k = all keeps the 136 directions.", ""]
    for step in steps:
        lines += [f"After {step} DiT steps:", "", "| k | " + " | ".join(f"shift {s}" for s in shifts) + " |",
                  "|---|" + "---:|" * len(shifts)]
        for k in components:
            lines.append(f"| {k} | " + " | ".join(cell(measured[k].get(s, {}).get(str(step))) for s in shifts) + " |")
        lines.append("")
    plot(measured, components, shifts, steps[-1], image)
    lines.append(f"![FID vs k]({image.relative_to(page.parent)})")
    replace_block(page, START, END, "\n".join(lines))
    print(f"wrote the sweep into {page} and {image}")


def plot(measured: dict, components: list[str], shifts: list[str], step: int, image: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for shift in shifts:
        points = [measured[k].get(shift, {}).get(str(step)) for k in components]
        points = [measured[k].get(p["same_as"], {}).get(str(step)) if p and "same_as" in p else p
                  for k, p in zip(components, points)]
        points = [p for p in points if p]
        ax.plot([p["components"] for p in points], [p["fid"] for p in points], marker="o", label=f"training shift {shift}")
    ax.set(xscale="log", xlabel="PCA directions k per position", ylabel="FID",
           title=f"Generation FID vs k, DiT step {step}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(image, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="DiT runs and results.json")
    parser.add_argument("--components", nargs="+", default=["8", "16", "32", "64", "all"])
    parser.add_argument("--shifts", nargs="+", default=["1", "auto"], help="training shifts (numbers or auto)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1000], help="DiT steps with an FID")
    parser.add_argument("--samples", type=int, default=2000, help="generated images per FID")
    parser.add_argument("--reference", type=int, default=2000, help="first N test images as the FID reference")
    parser.add_argument("--svg-checkpoints", type=Path, default=None,
                        help="a run of configs/demo/diffusion.yaml's recipe to borrow the k=16, shift 1 point from")
    parser.add_argument("--part", default="0/1", help="i/n: measure every n-th point from the i-th (one per process)")
    parser.add_argument("--docs", action="store_true", help="only write the table and plot into docs/results.md")
    args = parser.parse_args()
    results = Results(args.out / "results.json")
    if results.data and results.get("version") != RESULTS_VERSION:
        raise SystemExit(f"{results.path}: not a results file of this script's version {RESULTS_VERSION}")
    if args.docs:
        return write_docs(results)
    for value in [*args.components, *args.shifts]:
        if value not in ("all", "auto") and not value.replace(".", "", 1).isdigit():
            parser.error(f"{value!r}: components are integers or all, shifts numbers or auto")
    part, parts = (int(n) for n in args.part.split("/"))
    args.steps = sorted(args.steps)
    require_autoencoder(BASE)
    base = arm_config(BASE, args.out, 1)
    args.svg_run = borrowed_run(args.svg_checkpoints, base)
    autoencoder = load_autoencoder(base.autoencoder)
    points = [(k, s) for s in args.shifts for k in args.components][part::parts]
    results.put(RESULTS_VERSION, "version")
    for key, value in {"machine": f"{platform.machine()} CPU, torch {torch.__version__}", "samples": args.samples,
                       "reference": args.reference, "date": time.strftime("%b %d %Y")}.items():
        results.put(value, "setting", key)
    measure(args, results, points, autoencoder.latent_size, autoencoder.latent_channels)


if __name__ == "__main__":
    main()
