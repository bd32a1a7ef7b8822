"""docs/results.md's "Small-scale reproduction" section from the reproduction's results.json: tables, plots, grids.

What each arm is comes from the results (``arms``: what the measuring script read from the arm's configs,
autoencoder and latent transform), so any set of arms and variants renders."""

from __future__ import annotations

from pathlib import Path

from svg_diffusion.config import load_config
from svg_diffusion.trainers.diffusion import DiffusionTrainConfig
from svg_diffusion.utils.files import atomic_path

from reporting import DOCS, IMAGES, Results, replace_block
from reproduction_runs import ARMS, grid_path, log, run_dir, shown, slug

PAGE = DOCS / "results.md"
START, END = "<!-- reproduction:start -->", "<!-- reproduction:end -->"
TRANSFORM_WORDS = {"pca": "whitened PCA directions", "per_channel": "normalized per channel"}  # the latent transforms


def plot(results: Results, args) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        written.append(IMAGES / name)
        fig.tight_layout()
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    if results.get("fid"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        variants = results.get("variants") or {}
        for arm, points in results.get("fid").items():
            steps = sorted(int(s) for s in points)
            ax.plot(steps, [points[str(s)]["fid"] for s in steps], marker="o", linestyle="--" if arm in variants else "-",
                    label=f"{arm} (variant)" if arm in variants else f"{arm} latents")
        ax.set(xlabel="DiT training steps (batch 128)", ylabel="FID", title="Generation FID vs training steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "reproduction_fid_vs_steps.png")
    if results.get("sampling"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for arm, points in results.get("sampling").items():
            for scale in sorted({key.split("/")[1] for key in points}, reverse=True):
                keys = sorted((k for k in points if k.split("/")[1] == scale), key=lambda k: int(k.split("/")[0]))
                ax.plot([int(k.split("/")[0]) for k in keys], [points[k]["fid"] for k in keys], marker="o",
                        linestyle="-" if scale != "1" else "--", label=f"{arm}, CFG {scale}")
        ax.set(xscale="log", xlabel="sampling steps (Euler)", ylabel="FID", title="FID vs sampling steps")
        ax.set_xticks(args.sampling_steps, [str(n) for n in args.sampling_steps])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "reproduction_fid_vs_sampling.png")
    return written


def fid_cell(point: dict | None, key: str = "fid") -> str:
    return "not measured" if point is None else f"{point[key]:.1f}"


def minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min"


def shape(dims: list[int]) -> str:
    return "×".join(map(str, dims))


def main_arms(results: Results) -> list[str]:
    """The main arms the results describe, in the order of ``ARMS``."""
    described = results.get("arms") or {}
    return [arm for arm in ARMS if arm in described]


def modelled(arm: dict) -> str:
    """What an arm's DiT models of its latent, in words."""
    if arm["transform"] == "pca":
        return (f"its whitened top-{arm['modelled'][2]} PCA directions ({100 * arm['explained_variance']:.1f}% of "
                "the variance), one basis for all positions")
    return "the latent normalized per channel"


def borrowed_checkpoints(results: Results, args) -> dict[str, dict[str, list[int]]]:
    """arm -> {run folder: steps} of the FID points that sampled checkpoints of a run other than the script's."""
    borrowed: dict[str, dict[str, list[int]]] = {}
    for arm, points in (results.get("fid") or {}).items():
        own = shown(run_dir(arm, args.out))
        for step, point in points.items():
            run = str(Path(point["checkpoint"]).parent.parent)
            if run != own:
                borrowed.setdefault(arm, {}).setdefault(run, []).append(int(step))
    return borrowed


def preamble(results: Results, args) -> list[str]:
    setting, wall = results.get("setting") or {}, results.get("wall_s") or {}
    stages = ", ".join(f"{stage} {minutes(t)}" for stage, t in (wall.get("stages") or {}).items())
    threads = ", ".join(f"{stage} {n}" for stage, n in (setting.get("threads") or {}).items())
    training = "; ".join(f"{arm} " + ", ".join(f"to {s}: {minutes(t)}" for s, t in runs.items())
                         for arm, runs in (wall.get("dit_training") or {}).items())
    described, arms = results.get("arms") or {}, main_arms(results)
    borrowed = borrowed_checkpoints(results, args)
    lines = [f"Fashion-MNIST 32×32, {len(arms)} arms that differ only in the autoencoder and what the DiT models of "
             "its latent:", "",
             "| arm | autoencoder | latent | the DiT models | numbers the DiT models per image | DiT config |",
             "|---|---|---|---|---:|---|"]
    for arm in arms:
        a = described[arm]
        numbers = a["modelled"][0] * a["modelled"][1] * a["modelled"][2]
        lines.append(f"| {arm} | {a['autoencoder_kind']} (`{a['autoencoder']}`) | {shape(a['latent'])} | "
                     f"{modelled(a)} | {numbers} | `{a['config']}` |")
    channels = ", ".join(f"{arm} {described[arm]['modelled'][2]}" for arm in arms)
    options = [f"--out {args.out}", "--steps " + " ".join(map(str, args.steps))]
    if args.sampling_at != args.steps[-1]:
        options.append(f"--sampling-at {args.sampling_at}")
    options += [f"--samples {args.samples}", f"--probe-train {args.probe_train}", f"--probe-test {args.probe_test}"]
    options += dict.fromkeys(f"--svg-checkpoints {run}" for runs in borrowed.values() for run in runs)
    command = "OMP_NUM_THREADS=1 python benchmarks/reproduction.py " + " ".join(options)
    lines += [
        "",
        "The DiT configs are one recipe (model, flow, optimizer, seed, data order, batch 128, EMA 0.999 with warmup)",
        "but for the autoencoder and the latent transform, so equal steps are equal compute: the DiTs differ only in",
        f"their input and output channels ({channels}).",
        "Every autoencoder was trained with the demo autoencoder's decoder, losses, optimizer, batch and steps, and",
        "none decodes with a decoder fine-tuned afterwards (the SVG arm's is the demo v1 autoencoder, not demo v2's",
        "fine-tuned decoder); (4) gives the steps each one trained where its run's log came with it.",
        "",
        "```",
        *dict.fromkeys(f"{described[arm]['autoencoder_made_by']}   # the {arm} arm's autoencoder" for arm in arms),
        f"{command}   # one process per core: --only STAGES --arms ARMS (the script's docstring)",
        "```",
        "",
        f"- FID: {setting.get('samples', args.samples)} generated images (classes balanced, DiT and decoder in bf16,",
        f"  sample i from seed (0, i)) against the Inception statistics of the first {setting.get('reference', args.reference)}",
        "  test images; FID is biased upward at this sample count, so compare numbers within these tables only.",
    ]
    for arm, runs in borrowed.items():
        for run, steps in runs.items():
            lines += [f"- {arm} arm at step(s) {', '.join(map(str, sorted(steps)))}: the checkpoints of `{run}`, a",
                      "  run made elsewhere; the script checked that its config is the arm's recipe, each checkpoint's",
                      "  engine settings, and that its autoencoder encodes exactly as the arm's (every weight but the",
                      "  decoder's), so its DiT modelled this latent, decoded here by the arm's",
                      f"  `{described[arm]['autoencoder']}`."]
    lines += [
        "- Every other point: a DiT the script trained itself, in segments (exact resume; the constant learning rate",
        "  after warmup does not depend on `max_steps`).",
        f"- Machine: {setting.get('machine', '?')}, a 2-core CPU shared with other jobs (timings are not speeds of",
        f"  the methods); torch threads per stage: {threads or '?'}. Time per stage (summed over processes where",
        f"  several ran one stage side by side): {stages or '?'}; of which DiT training: {training or '?'}.",
        "",
    ]
    return lines


def probe_label(name: str, row: dict, described: dict) -> str:
    """A probe row's feature set in words (the arm's latent, or what its DiT models of it)."""
    arm = described.get(row.get("arm"))
    if arm is None:
        return name
    if row["features"] == "latent":
        return f"{row['arm']}: autoencoder latent, all {arm['latent'][2]} channels"
    return f"{row['arm']}: what its DiT models ({shape(arm['modelled'])}, {TRANSFORM_WORDS[arm['transform']]})"


def decodes(row: dict, described: dict) -> str:
    """What a reconstruction row decoded: the autoencoder's latent, or that latent through the arm's transform."""
    if row["decodes"] == "latent":
        return f"the latent ({shape(row['latent'])})"
    h, w, c = row["latent"]
    kept = f"{shape([h, w, row['modelled_channels']])} of {shape([h, w, c])}"
    arm = described.get(row["arm"], {})
    if "explained_variance" in arm:
        kept += f", {100 * arm['explained_variance']:.1f}% of the variance"
    return f"the latent through its DiT's {TRANSFORM_WORDS[row['transform']]} ({kept})"


def markdown(results: Results, args) -> str:
    lines = preamble(results, args)
    arms, described = main_arms(results), results.get("arms") or {}
    fid = results.get("fid") or {}
    steps = sorted({int(s) for arm in arms for s in fid.get(arm, {})})
    lines += ["### (1) Generation FID vs DiT training steps", ""]
    if steps:
        lines += ["| DiT steps | " + " | ".join(f"{arm} latents" for arm in arms) + " |",
                  "|---:|" + "---:|" * len(arms)]
        lines += [f"| {s} | " + " | ".join(fid_cell(results.get("fid", arm, str(s))) for arm in arms) + " |"
                  for s in steps]
        lines += ["", "![FID vs training steps](images/reproduction_fid_vs_steps.png)"]
    else:
        lines += ["Not measured."]
    sampling = results.get("sampling") or {}
    keys = sorted({k for points in sampling.values() for k in points},
                  key=lambda k: (-float(k.split("/")[1]), int(k.split("/")[0])))
    lines += ["", f"### (2) FID vs sampling steps (DiT after {args.sampling_at} steps)", ""]
    if keys:
        lines += ["| Euler steps | CFG scale | " + " | ".join(f"{arm} latents" for arm in arms) + " |",
                  "|---:|---:|" + "---:|" * len(arms)]
        lines += [f"| {k.split('/')[0]} | {k.split('/')[1]} | "
                  + " | ".join(fid_cell(results.get("sampling", arm, k)) for arm in arms) + " |" for k in keys]
        lines += ["", "![FID vs sampling steps](images/reproduction_fid_vs_sampling.png)"]
    else:
        lines += ["Not measured."]
    probe = results.get("probe") or {}
    lines += ["", "### (3) Linear probe (fixed protocol of `evaluation.probe`)", ""]
    if probe:
        lines += ["| features (flattened 8×8 map) | dim | linear probe | k-NN (k=20) | train / test images |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {probe_label(name, r, described)} | {r['dim']} | {100 * r['linear_top1']:.1f}% | "
                  f"{100 * r['knn_top1']:.1f}% | {r['num_train']} / {r['num_test']} |" for name, r in probe.items()]
        lines += ["", "The probe standardizes every dimension, so a per-channel normalization changes nothing: an arm",
                  "normalized per channel scores the same on its latent and on what its DiT models."]
    else:
        lines += ["Not measured."]
    recon = results.get("reconstruction") or {}
    lines += ["", "### (4) Reconstruction (first 2000 test images, `eval-autoencoder`)", ""]
    if recon:
        lines += ["| autoencoder | decodes | training steps (batch 32) | PSNR ↑ | SSIM ↑ | LPIPS ↓ | rFID ↓ |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, r in recon.items():
            steps = r["steps"] or "? (no run log with the folder)"
            lines.append(f"| {name} | {decodes(r, described)} | {steps} | {r['psnr']:.2f} | "
                         f"{r['ssim']:.3f} | {r['lpips']:.4f} | {r['rfid']:.1f} |")
        lines += ["", "A DiT generates what it models; the decoder sees it through the arm's transform. A per-channel",
                  "transform is invertible, so the latent's row bounds that arm; a PCA transform keeps only its",
                  "directions, so the \"through its DiT's\" row is what a perfect DiT of that arm would reach."]
    else:
        lines += ["Not measured."]
    return "\n".join(lines + diagnosis_tables(results) + variants_table(results))


def clean_rfid(results: Results, arm: str) -> str:
    """The arm's rFID through its DiT's transform (the reconstruction stage's row; the latent's own row when
    the transform is invertible)."""
    row = results.get("reconstruction", f"{arm} through its DiT's transform") or results.get("reconstruction", arm)
    return fid_cell(row, "rfid")


def diagnosis_tables(results: Results) -> list[str]:
    """(5): each arm's decoder under noise in its DiT's coordinates, and its DiT's samples against the real
    latents at each step (reproduction_diagnosis)."""
    noise, fit = results.get("diagnosis", "decoder_noise") or {}, results.get("diagnosis", "latent_fit") or {}
    others = results.get("diagnosis", "other_decoder") or {}
    if not noise and not fit and not others:
        return []
    arms = [arm for arm in main_arms(results) if arm in noise or arm in fit or arm in others]
    lines = ["", "### (5) Where the FID comes from, in the coordinates each DiT models", "",
             "Every arm's DiT models unit-variance coordinates (whitened PCA directions or normalized channels), so",
             "one unit is one standard deviation of the data in each (`benchmarks/reproduction_diagnosis.py`)."]
    levels = sorted({level for rows in noise.values() for level in rows}, key=float)
    if noise:
        lines += ["", "The decoder: rFID (first 2000 test images) decoded from the latent with Gaussian noise of std σ "
                  "added in those coordinates (σ = 0: the reconstruction row of (4) that the DiT can reach).", "",
                  "| arm | σ = 0 | " + " | ".join(f"σ = {level}" for level in levels)
                  + " | noise in the latents it was trained on (RMS, same units) |",
                  "|---|---:|" + "---:|" * (len(levels) + 1)]
        trained = results.get("diagnosis", "decoder_training_noise") or {}
        lines += [f"| {arm} | {clean_rfid(results, arm)} | "
                  + " | ".join(fid_cell(noise.get(arm, {}).get(level), "rfid") for level in levels)
                  + (f" | {trained[arm]:.4f} |" if arm in trained else " | not measured |") for arm in arms]
    if fit:
        lines += ["", "The DiT: its samples (the FID points' sampler, labels and noise) against the real test latents. "
                  "Fréchet distances are divided by the reference's total variance (0: the same distribution); "
                  "\"floor\": the first half of the real latents against the second, with as many latents on each "
                  "side as the generated row (what the sample size alone gives). Held-out loss: the flow-matching "
                  "loss on the test latents, mean over t = 0.05, 0.15, ..., 0.95 (predicting 0 gives ~2).", "",
                  "| DiT steps | arm | FID | coordinate std (real) | per-position distance (floor) | "
                  "whole-latent distance, top 64 directions (floor) | held-out loss |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for step in sorted({int(s) for rows in fit.values() for s in rows}):
            for arm in arms:
                row = fit.get(arm, {}).get(str(step))
                if row is None:
                    continue
                d = row["frechet"]
                lines.append(f"| {step} | {arm} | {fid_cell(results.get('fid', arm, str(step)))} | "
                             f"{row['std_generated']:.3f} ({row['std_real']:.3f}) | "
                             f"{d['position']:.4f} ({d['position_real_halves']:.4f}) | "
                             f"{d['global']:.3f} ({d['global_real_halves']:.3f}) | {row['held_out_loss']['mean']:.3f} |")
    if others:
        lines += ["", "The same samples decoded by other decoders of the arm's latent (fine-tuned on it after the arm's "
                  "autoencoder was trained, so outside the fair comparison; `--other-decoder`):", "",
                  "| arm | decoder | DiT steps | FID | rFID through its DiT's transform |", "|---|---|---:|---:|---:|"]
        for arm in arms:
            steps = sorted({int(s) for points in others.get(arm, {}).values() for s in points})
            for step in steps:
                lines.append(f"| {arm} | the arm's own | {step} | {fid_cell(results.get('fid', arm, str(step)))} | "
                             f"{clean_rfid(results, arm)} |")
                lines += [f"| {arm} | `{folder}` | {step} | {point['fid']:.1f} | {point['rfid_through_transform']:.1f} |"
                          for folder, points in others[arm].items() if (point := points.get(str(step)))]
    return lines


def variants_table(results: Results) -> list[str]:
    """(6): FID of the main arms and their variants (rows) at each DiT step (columns)."""
    variants = results.get("variants") or {}
    if not variants:
        return []
    rows = [*main_arms(results), *variants]
    fid, matched = results.get("fid") or {}, results.get("matched_shift") or {}
    steps = sorted({int(s) for arm in rows for s in fid.get(arm, {})})
    last = str(max((int(s) for arm in rows for s in matched.get(arm, {})), default=steps[-1] if steps else 0))
    default = load_config(DiffusionTrainConfig, ARMS["SVG"].config).sampling
    about = ("Arms that change one or two settings of a main arm's recipe (`--variant NAME BASE KEY=VALUE ...` "
             "of the script; the same as `--set KEY=VALUE` on `svg-diffusion train`), everything else as above. "
             f"FID with the config's sampler (25 Euler steps, CFG {default.guidance.scale:g}, sampling shift "
             f"{default.shift:g}); last column: the checkpoints of step {last} sampled with the sampling shift "
             "equal to the arm's training shift k.")
    lines = ["", "### (6) Variants of the DiT recipe", "", about, "",
             "| arm | recipe | " + " | ".join(f"step {s}" for s in steps) + f" | step {last}, sampling shift = k |",
             "|---|---|" + "---:|" * (len(steps) + 1)]
    for arm in rows:
        recipe_text = ", ".join(f"`{o}`" for o in variants[arm]["overrides"]) if arm in variants else "as in (1)"
        point = matched.get(arm, {}).get(last)
        shift = "" if point is None else f"k = {point['shift']:g}: "
        lines.append(f"| {arm} | {recipe_text} | " + " | ".join(fid_cell(fid.get(arm, {}).get(str(s))) for s in steps)
                     + f" | {shift}{fid_cell(point) if point else '—'} |")
    return lines


def copy_sample_grids(results: Results, args) -> dict[str, str]:
    """Each arm's preview grid at the last of ``--steps`` (drawn by the script, CFG 4, same noise, decoded with the
    arm's autoencoder), into docs/images: arm -> its markdown image, for the arms that have one."""
    images, step = {}, args.steps[-1]
    for arm in main_arms(results):
        grid = grid_path(arm, step, args.out)
        if grid.is_file():
            target = IMAGES / f"reproduction_samples_{slug(arm)}.png"
            with atomic_path(target) as tmp:
                tmp.write_bytes(grid.read_bytes())
            images[arm] = f"![{arm} latents, DiT step {step}](images/{target.name})"
    return images


def write_docs(results: Results, args) -> None:
    plot(results, args)
    images = copy_sample_grids(results, args)
    grids = ["", f"Preview grids at DiT step {args.steps[-1]} (EMA, 25 Euler steps, CFG 4, one row per class; "
             f"left to right: {', '.join(images)}):", "", " ".join(images.values())] if images else []
    # The page is read right before writing: another section of it has another author.
    replace_block(PAGE, START, END, markdown(results, args) + "\n" + "\n".join(grids),
                  heading="## Small-scale reproduction (`benchmarks/reproduction.py`)\n\n")
    log(f"wrote {PAGE}")
