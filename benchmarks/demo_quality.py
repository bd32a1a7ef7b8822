"""Sample quality of the shipped demo pipeline: FID and precision/recall against the Fashion-MNIST test set.

    python benchmarks/demo_quality.py --docs                          # 2000 samples per row, 5/10/25 Euler steps
    python benchmarks/demo_quality.py --num 500 --rows euler:10       # a quick look, printed only
    python benchmarks/demo_quality.py --docs --fp32 runs/demo/pipeline      # + float16-storage parity
    python benchmarks/demo_quality.py --pipeline runs/demo/mean_flow/pipeline --speed --plot fid_vs_nfe.png \
        --rows euler:5 euler:10 euler:25 mean_flow:1 mean_flow:2 mean_flow:4 --speed-baseline euler:25

Each row (``--rows SAMPLER:STEPS ...``) samples ``--num`` images with balanced classes (sample i: class
i mod 10, noise seeded by (seed, i), so every row starts from the same noise), at the pipeline's guidance,
and compares their Inception features with those of the first ``--num`` test images (cached by the
evaluation code) by FID and k=3 precision/recall. Its NFE is the DiT forwards per sample, counted while
sampling one (a guided velocity is two: the conditional and the unconditional branch). A reference row
compares as many *real* training images with the same test images: the FID a perfect model would get at
this sample size (FID is biased upwards at small N). ``--fp32`` also samples from the float32 pipeline the
shipped one was exported from and reports the pixel differences.

``--speed`` times the demo grid (80 images and noise of ``svg-diffusion demo``) for every row and the
baseline, interleaved, and reports the fastest of ``--speed-repeats`` generations as
images/s and as a ratio to ``--speed-baseline`` (default: the pipeline's default settings), in ``--precision``.
``--plot`` draws FID against NFE.

Rows are saved to ``--out`` (JSON) as they finish; a rerun reuses the rows already there for the same
settings (``--fresh`` recomputes); speed is measured anew by every run that asks for it. ``--docs`` writes
the table into docs/demo.md and README.md between ``<!-- demo-quality:start -->`` and
``<!-- demo-quality:end -->``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from svg_diffusion.demo import GRID_PER_CLASS, demo_pipeline
from svg_diffusion.diffusion import SAMPLERS
from svg_diffusion.errors import SVGError
from svg_diffusion.evaluation import InceptionFeatures, features_and_stats, frechet_distance, precision_recall
from svg_diffusion.evaluation.sources import nhwc_uint8_images
from svg_diffusion.pipeline import PRECISIONS, SVGPipeline
from svg_diffusion.sample_writer import class_labels, iter_samples, sample_noise
from svg_diffusion.utils.files import atomic_path
from svg_diffusion.utils.shipped import DEMO_PIPELINE_DIR

from reporting import DOCS, REPO, replace_block

PAGES = [DOCS / "demo.md", REPO / "README.md"]
START, END = "<!-- demo-quality:start -->", "<!-- demo-quality:end -->"
REAL = "fashion_mnist:test"
REFERENCE = "fashion_mnist:train"


@dataclass(frozen=True)
class Row:
    """One row of the table: a sampler and its number of steps, given as ``SAMPLER:STEPS``."""

    sampler: str
    steps: int

    def __str__(self) -> str:
        return f"{self.sampler}:{self.steps}"


def parse_row(text: str) -> Row:
    """``euler:25`` -> Row("euler", 25): argparse's ``type`` of ``--rows``, so a bad row is a usage error."""
    sampler, _, steps = text.rpartition(":")
    if sampler not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected SAMPLER:STEPS with a sampler of {', '.join(SAMPLERS)} and "
                                         f"STEPS >= 1 (e.g. euler:25), got {text!r}")
    return Row(sampler, int(steps))


def forwards_per_sample(pipe: SVGPipeline, row: Row) -> int:
    """NFE: the transformer forwards that generating one sample with ``row`` at the pipeline's guidance takes.

    Counted, not derived: a hook adds up the batch sizes the transformer sees while one sample is generated,
    so every sampler's and guidance mode's rule is the pipeline's own: a guided velocity is 2 (conditional
    and unconditional branch, one forward of twice the batch), an unguided one 1 (scale 1, outside a guidance
    interval), a CFG-Zero* zero-init step 0, a mean_flow step 1 (its guidance is a model input).
    """
    batch_sizes = []
    hook = pipe.transformer.register_forward_hook(lambda module, inputs, output: batch_sizes.append(len(output)))
    try:
        pipe([0], num_steps=row.steps, sampler=row.sampler, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    return sum(batch_sizes)


def time_demo_grid(pipe: SVGPipeline, rows: list[Row], seed: int, repeats: int,
                   precision: str = "fp32") -> tuple[int, dict[Row, float]]:
    """The demo grid's number of images, and the fewest seconds of ``repeats`` generations of it per row.

    The grid's labels and noise are those of ``svg-diffusion demo --seed seed``, drawn once: the timed part is
    the pipeline call to uint8 images (the grid's drawing and PNG are left out). Rows take turns in every
    repetition, after one untimed warm-up generation each, so a change of the machine's load hits them alike.
    """
    labels = class_labels(pipe, per_class=GRID_PER_CLASS)
    noise = sample_noise(pipe, range(len(labels)), seed)

    def generate(row: Row) -> None:
        pipe(labels, latents=noise, num_steps=row.steps, sampler=row.sampler, output_type="np", precision=precision)

    for row in rows:
        generate(row)
    fastest = {row: math.inf for row in rows}
    for _ in range(repeats):
        for row in rows:
            start = time.perf_counter()
            generate(row)
            fastest[row] = min(fastest[row], time.perf_counter() - start)
    return len(labels), fastest


def sample_all(pipe: SVGPipeline, num: int, seed: int, batch_size: int, **options) -> tuple[np.ndarray, float]:
    """``num`` balanced samples as uint8 [N, H, W, 3] and the seconds they took."""
    labels = class_labels(pipe, num=num)
    start = time.perf_counter()
    batches = [images for _, images in iter_samples(pipe, labels, range(num), seed, batch_size, **options)]
    return np.concatenate(batches), time.perf_counter() - start


def scores(real: tuple[torch.Tensor, object], fake_images: np.ndarray, inception: InceptionFeatures,
           batch_size: int) -> dict[str, float]:
    """FID and precision/recall of generated images (not cached: they are new every run) against ``real``."""
    real_features, real_stats = real
    fake_features, fake_stats = features_and_stats(nhwc_uint8_images(fake_images, "samples"), inception,
                                                   batch_size=batch_size, cache=False, progress=True)
    precision, recall = precision_recall(real_features, fake_features)
    return {"fid": frechet_distance(real_stats, fake_stats), "precision": precision, "recall": recall}


def fp16_parity(shipped: SVGPipeline, fp32_folder: str, num: int, seed: int) -> dict[str, float]:
    """Pixel differences between the shipped (float16-stored) pipeline and its float32 source, same noise."""
    fp32 = SVGPipeline.from_pretrained(fp32_folder)
    labels = class_labels(shipped, num=num)
    noise = sample_noise(shipped, range(num), seed)
    a = shipped(labels, latents=noise, output_type="np").astype(int)
    b = fp32(labels, latents=noise, output_type="np").astype(int)
    return {"num": num, "max_abs": int(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean()),
            "share_differing": float((a != b).mean())}


def table(rows: list[dict], reference: dict | None, speed: dict | None) -> str:
    """The markdown table; with ``speed`` (:func:`main`'s record of :func:`time_demo_grid`) two more columns.

    The FID rows' own sampling speed stays in the JSON only: measured once per row, at different times on a
    shared machine, it measures the load more than the sampler; ``speed`` times the rows in one interleaved run.
    """
    header, rule = "| sampler | steps | NFE | FID ↓ | precision ↑ | recall ↑ |", "|---|---:|---:|---:|---:|---:|"
    if speed is not None:
        header, rule = header + " demo grid, images/s ↑ | × baseline |", rule + "---:|---:|"
    lines = [header, rule]
    for row in rows:
        line = (f"| {row['sampler']} | {row['steps']} | {row['nfe']} | {row['fid']:.1f} | {row['precision']:.3f} | "
                f"{row['recall']:.3f} |")
        if speed is not None:
            timed = speed["rows"][str(Row(row["sampler"], row["steps"]))]
            line += f" {timed['images_per_second']:.1f} | {timed['ratio_to_baseline']:.1f} |"
        lines.append(line)
    if reference is not None:
        lines.append(f"| *real training images* | – | – | {reference['fid']:.1f} | {reference['precision']:.3f} | "
                     f"{reference['recall']:.3f} |" + (" – | – |" if speed is not None else ""))
    return "\n".join(lines)


def plot_fid_vs_nfe(rows: list[dict], reference: dict | None, path: Path) -> Path:
    """A PNG of FID against NFE (log scale): one line per sampler, the real-vs-real FID as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for sampler in dict.fromkeys(row["sampler"] for row in rows):
        points = sorted((row["nfe"], row["fid"]) for row in rows if row["sampler"] == sampler)
        ax.plot(*zip(*points), marker="o", label=sampler)
    if reference is not None:
        ax.axhline(reference["fid"], color="0.4", linestyle="--", label="real training images")
    nfes = sorted({row["nfe"] for row in rows})
    ax.set(xscale="log", xlabel="NFE (DiT forwards per sample)", ylabel="FID", title="Demo pipeline: FID vs NFE")
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()  # the log axis's minor ticks would label values no row has
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_docs(block: str) -> None:
    for path in PAGES:
        replace_block(path, START, END, block)
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(DEMO_PIPELINE_DIR))
    parser.add_argument("--num", type=int, default=2000, help="samples per row (and test images)")
    parser.add_argument("--rows", type=parse_row, nargs="+", metavar="SAMPLER:STEPS",
                        default=[Row("euler", 5), Row("euler", 10), Row("euler", 25)],
                        help="the table's rows, e.g. euler:25 mean_flow:1 (mean_flow: a MeanFlow --pipeline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--no-reference", action="store_true", help="skip the real-vs-real row")
    parser.add_argument("--fp32", default=None, help="the float32 pipeline the shipped one was exported from")
    parser.add_argument("--out", default="outputs/demo_quality.json")
    parser.add_argument("--fresh", action="store_true", help="recompute rows already in --out")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/demo.md and README.md")
    parser.add_argument("--speed", action="store_true",
                        help="time the demo grid (80 images) for every row and the --speed-baseline")
    parser.add_argument("--speed-repeats", type=int, default=5,
                        help="--speed: timed generations per row (the fastest counts)")
    parser.add_argument("--speed-baseline", type=parse_row, default=None, metavar="SAMPLER:STEPS",
                        help="--speed: the row the others are compared with (default: the pipeline's default settings)")
    parser.add_argument("--plot", default=None, help="write FID against NFE to this PNG")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="sample (and time) the rows in this precision (SVGPipeline.__call__'s precision)")
    args = parser.parse_args()
    if args.speed_repeats < 1:
        parser.error(f"--speed-repeats must be >= 1, got {args.speed_repeats}")
    rows_asked = list(dict.fromkeys(args.rows))  # a row given twice is one row

    pipe = demo_pipeline(args.pipeline)
    for row in rows_asked:  # a sampler the pipeline cannot run fails here, before any sampling
        try:
            pipe.sampling_settings(num_steps=row.steps, sampler=row.sampler)
        except SVGError as error:
            parser.error(f"--rows {row}: {error}")
    out = Path(args.out)
    done = {} if args.fresh or not out.is_file() else json.loads(out.read_text())

    def save(key: str, row: dict) -> None:
        done[key] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(done, indent=2) + "\n")

    started, load_before = time.perf_counter(), os.getloadavg()
    inception = InceptionFeatures()
    real = features_and_stats(REAL, inception, limit=args.num, batch_size=args.batch_size, progress=True)
    rows = []
    for row in rows_asked:
        guidance = pipe.sampling_settings(num_steps=row.steps, sampler=row.sampler).guidance.scale  # few_steps' too
        key = f"{args.pipeline}|{row.sampler}|{row.steps}|{args.num}|{args.seed}|{guidance}" + (
            "" if args.precision == "fp32" else f"|{args.precision}")  # fp32 rows keep the keys saved before
        if key not in done:
            images, seconds = sample_all(pipe, args.num, args.seed, args.batch_size, num_steps=row.steps,
                                         sampler=row.sampler, precision=args.precision)
            save(key, {"sampler": row.sampler, "steps": row.steps, "num": args.num, "guidance": guidance,
                       "images_per_second": args.num / seconds, **scores(real, images, inception, args.batch_size)})
        # Rows saved before NFE was recorded get it here: counting takes one sample's forwards.
        rows.append({**done[key], "nfe": forwards_per_sample(pipe, row)})
        print(rows[-1])
    reference = None
    if not args.no_reference:
        key = f"reference|{args.num}"
        if key not in done:
            train_features, train_stats = features_and_stats(REFERENCE, inception, limit=args.num,
                                                             batch_size=args.batch_size, progress=True)
            precision, recall = precision_recall(real[0], train_features)
            save(key, {"fid": frechet_distance(real[1], train_stats), "precision": precision, "recall": recall})
        reference = done[key]
    parity = None
    if args.fp32:
        key = f"parity|{args.pipeline}|{args.fp32}"
        if key not in done:
            save(key, fp16_parity(pipe, args.fp32, num=100, seed=args.seed))
        parity = done[key]
    speed = None
    if args.speed:
        baseline = args.speed_baseline or Row(pipe.sampling.sampler, pipe.sampling.num_steps)
        load_at_timing = os.getloadavg()[0]
        grid_size, fastest = time_demo_grid(pipe, list(dict.fromkeys([*rows_asked, baseline])), args.seed,
                                            args.speed_repeats, args.precision)
        speed = {"baseline": str(baseline), "images": grid_size, "repeats": args.speed_repeats,
                 "precision": args.precision, "load": load_at_timing,
                 "rows": {str(row): {"seconds": seconds, "images_per_second": grid_size / seconds,
                                     "ratio_to_baseline": fastest[baseline] / seconds}
                          for row, seconds in fastest.items()}}
        # The last run's timings, for the record: never reused.
        save(f"speed|{args.pipeline}|{args.seed}|{args.precision}", speed)
        print(speed)
    if args.plot:
        print(f"wrote {plot_fid_vs_nfe(rows, reference, Path(args.plot))}")

    minutes = (time.perf_counter() - started) / 60
    scales = {row["sampler"]: row["guidance"] for row in rows}  # a pipeline's few-step sampler has its own
    guidance = ", ".join(f"{scale:g} for {sampler}" for sampler, scale in scales.items())
    notes = [
        f"{args.num} samples per row ({args.num // 10} per class), guidance {guidance} "
        f"({pipe.sampling.guidance.mode} CFG; for mean_flow the model's guidance input), time shift "
        f"{pipe.sampling.shift:g}, seed {args.seed}; against the first {args.num} Fashion-MNIST test images "
        "(32×32), Inception-v3 pool features, precision/recall with k = 3. NFE: DiT forwards per sample, counted "
        "(a guided velocity is 2: the conditional and the unconditional branch, batched as one forward).",
        f"The last row compares the first {args.num} *training* images with the same test images: the FID of "
        "a perfect model at this sample size." if reference else "",
        f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"{minutes:.0f} min for this run of the benchmark (rows reused from {out} not counted), on a shared "
        f"machine (load average {load_before[0]:.1f} at the start).",
    ]
    if parity:
        notes.append(f"float16 storage: {parity['num']} samples (25 steps) from the shipped pipeline and from its "
                     f"float32 source, same noise: {100 * parity['share_differing']:.2f}% of pixel values differ, "
                     f"by {parity['mean_abs']:.4f} levels on average (max {parity['max_abs']} of 255).")
    if speed is not None:
        baseline_speed = speed["rows"][speed["baseline"]]
        notes.append(f"Speed: the demo grid ({speed['images']} images, the noise of `svg-diffusion demo`), "
                     f"{speed['precision']}, the fastest of {speed['repeats']} generations per row, rows interleaved; "
                     f"× baseline is against {speed['baseline']} ({baseline_speed['images_per_second']:.1f} images/s, "
                     f"{baseline_speed['seconds']:.2f} s) timed in the same run (load average {speed['load']:.1f}).")
    block = table(rows, reference, speed) + "\n\n" + "\n".join(f"- {note}" for note in notes if note)
    print(block)
    if args.docs:
        write_docs(block)


if __name__ == "__main__":
    main()
