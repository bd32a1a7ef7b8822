"""docs/results.md's "Small-scale reproduction" section from the reproduction's results.json: tables, plots, grids."""

from __future__ import annotations

from pathlib import Path

from svg_diffusion.config import load_config
from svg_diffusion.trainers.diffusion import DiffusionTrainConfig
from svg_diffusion.training import checkpoint_path
from svg_diffusion.utils.files import atomic_path

from reporting import DOCS, IMAGES, Results, replace_block
from reproduction_runs import ARMS, log, run_dir, slug

PAGE = DOCS / "results.md"
START, END = "<!-- reproduction:start -->", "<!-- reproduction:end -->"


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
        ax.legend()
        save(fig, "reproduction_fid_vs_sampling.png")
    return written


def fid_cell(point: dict | None) -> str:
    return "not measured" if point is None else f"{point['fid']:.1f}"


def minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min"


def preamble(results: Results, args) -> list[str]:
    setting, wall = results.get("setting") or {}, results.get("wall_s") or {}
    stages = ", ".join(f"{stage} {minutes(t)}" for stage, t in (wall.get("stages") or {}).items())
    threads = ", ".join(f"{stage} {n}" for stage, n in (setting.get("threads") or {}).items())
    borrowed = [s for s in args.steps if checkpoint_path(args.svg_checkpoints, s).is_file()]
    training = "; ".join(f"{arm} " + ", ".join(f"to {s}: {minutes(t)}" for s, t in runs.items())
                         for arm, runs in (wall.get("dit_training") or {}).items())
    return [
        "Fashion-MNIST 32×32, three arms that differ only in the autoencoder and what the DiT models of its latent:",
        "",
        "| arm | autoencoder | latent | the DiT models | numbers the DiT models per image |",
        "|---|---|---|---|---:|",
        "| SVG | the demo autoencoder: frozen demo encoder + 8-channel residual (configs/demo/autoencoder.yaml) | "
        "8×8×136 | its whitened top-16 PCA directions, one basis for all positions (configs/demo/diffusion.yaml) | "
        "1024 |",
        "| VAE | KL-regularized conv autoencoder, KL weight 1e-6 (configs/demo/vae.yaml) | 8×8×4 | "
        "the latent normalized per channel (configs/demo/vae_diffusion.yaml) | 256 |",
        "| VAE-16 | the same with 16 channels (configs/demo/vae16.yaml) | 8×8×16 | "
        "the latent normalized per channel (configs/demo/vae16_diffusion.yaml) | 1024 |",
        "",
        "The VAEs (`svg_diffusion.autoencoder.vae`) have the SVG autoencoder's decoder, losses, optimizer, batch and",
        "configured steps ((4) gives the steps each run trained); VAE keeps LDM's 4 channels, VAE-16 gives its DiT as",
        "many numbers per image as the SVG arm's. The three DiT configs are the same recipe (model, flow, optimizer,",
        "seed, data order, batch 128, EMA 0.999 with warmup) but for the latent transform, so equal steps are equal",
        "compute (the DiT differs only in its input and output channels: 16, 4, 16).",
        "",
        "```",
        "svg-diffusion train-autoencoder --config configs/demo/vae.yaml     # (4) gives the steps each one trained",
        "svg-diffusion train-autoencoder --config configs/demo/vae16.yaml",
        "svg-diffusion cache-latents --config configs/demo/vae_diffusion.yaml     # the script does it when missing",
        "svg-diffusion cache-latents --config configs/demo/vae16_diffusion.yaml",
        f"OMP_NUM_THREADS=1 python benchmarks/reproduction.py --steps {' '.join(map(str, args.steps))} "
        + ("" if args.sampling_at == args.steps[-1] else f"--sampling-at {args.sampling_at} ")
        + f"--samples {args.samples} --probe-train {args.probe_train} --probe-test {args.probe_test} --docs",
        "```",
        "",
        f"- FID: {setting.get('samples', args.samples)} generated images (classes balanced, DiT in bf16, sample i",
        f"  from seed (0, i)) against the Inception statistics of the first {setting.get('reference', args.reference)}",
        "  test images; with this few samples FID is biased upward, so only compare numbers within these tables.",
        f"- SVG arm at step(s) {', '.join(map(str, borrowed)) or 'none'}: the checkpoints of the demo run of",
        "  configs/demo/diffusion.yaml (runs/demo/diffusion, copied before pruning; the script checks that the run's",
        "  config is this recipe); at the other steps the script trained the arm itself with the same config. VAE",
        "  arms: trained by the script in segments (exact resume; the constant learning rate after warmup does not",
        "  depend on `max_steps`).",
        f"- Machine: {setting.get('machine', '?')}, a 2-core CPU shared with other jobs (timings are not speeds of",
        f"  the methods); torch threads per stage: {threads or '?'}. Time per stage (summed over processes where",
        f"  several ran one stage side by side): {stages or '?'}; of which DiT training: {training or '?'}.",
        "",
    ]


def markdown(results: Results, args) -> str:
    lines = preamble(results, args)
    fid = results.get("fid") or {}
    steps = sorted({int(s) for points in fid.values() for s in points})
    lines += ["### (1) Generation FID vs DiT training steps", ""]
    if steps:
        lines += ["| DiT steps | " + " | ".join(f"{arm} latents" for arm in ARMS) + " |",
                  "|---:|" + "---:|" * len(ARMS)]
        lines += [f"| {s} | " + " | ".join(fid_cell(results.get("fid", arm, str(s))) for arm in ARMS) + " |"
                  for s in steps]
        lines += ["", "![FID vs training steps](images/reproduction_fid_vs_steps.png)"]
    else:
        lines += ["Not measured."]
    sampling = results.get("sampling") or {}
    keys = sorted({k for points in sampling.values() for k in points},
                  key=lambda k: (-float(k.split("/")[1]), int(k.split("/")[0])))
    lines += ["", f"### (2) FID vs sampling steps (DiT after {args.sampling_at} steps)", ""]
    if keys:
        lines += ["| Euler steps | CFG scale | " + " | ".join(f"{arm} latents" for arm in ARMS) + " |",
                  "|---:|---:|" + "---:|" * len(ARMS)]
        lines += [f"| {k.split('/')[0]} | {k.split('/')[1]} | "
                  + " | ".join(fid_cell(results.get("sampling", arm, k)) for arm in ARMS) + " |" for k in keys]
        lines += ["", "![FID vs sampling steps](images/reproduction_fid_vs_sampling.png)"]
    else:
        lines += ["Not measured."]
    probe = results.get("probe") or {}
    lines += ["", "### (3) Linear probe (fixed protocol of `evaluation.probe`)", ""]
    if probe:
        lines += ["| features (flattened 8×8 map) | dim | linear probe | k-NN (k=20) | train / test images |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {name} | {r['dim']} | {100 * r['linear_top1']:.1f}% | {100 * r['knn_top1']:.1f}% | "
                  f"{r['num_train']} / {r['num_test']} |" for name, r in probe.items()]
    else:
        lines += ["Not measured."]
    recon = results.get("reconstruction") or {}
    lines += ["", "### (4) Reconstruction (first 2000 test images, `eval-autoencoder`)", ""]
    if recon:
        lines += ["| autoencoder | latent | training steps (batch 32) | PSNR ↑ | SSIM ↑ | LPIPS ↓ | rFID ↓ |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, r in recon.items():
            shape = "×".join(map(str, r["latent"]))
            lines.append(f"| {name} | {shape} | {r.get('steps') or '?'} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                         f"{r['lpips']:.4f} | {r['rfid']:.1f} |")
    else:
        lines += ["Not measured."]
    return "\n".join(lines + variants_table(results))


def variants_table(results: Results) -> list[str]:
    """(5): FID of the main arms and their variants (rows) at each DiT step (columns)."""
    variants = results.get("variants") or {}
    if not variants:
        return []
    rows = [*ARMS, *variants]
    fid, matched = results.get("fid") or {}, results.get("matched_shift") or {}
    steps = sorted({int(s) for arm in rows for s in fid.get(arm, {})})
    last = str(max((int(s) for arm in rows for s in matched.get(arm, {})), default=steps[-1] if steps else 0))
    default = load_config(DiffusionTrainConfig, ARMS["SVG"]).sampling
    about = ("Arms that change one or two settings of a main arm's recipe (`--variant NAME BASE KEY=VALUE ...` "
             "of the script; the same as `--set KEY=VALUE` on `svg-diffusion train`), everything else as above. "
             f"FID with the config's sampler (25 Euler steps, CFG {default.guidance.scale:g}, sampling shift "
             f"{default.shift:g}); last column: the checkpoints of step {last} sampled with the sampling shift "
             "equal to the arm's training shift k.")
    lines = ["", "### (5) Variants of the DiT recipe", "", about, "",
             "| arm | recipe | " + " | ".join(f"step {s}" for s in steps) + f" | step {last}, sampling shift = k |",
             "|---|---|" + "---:|" * (len(steps) + 1)]
    for arm in rows:
        recipe_text = ", ".join(f"`{o}`" for o in variants[arm]["overrides"]) if arm in variants else "as in (1)"
        point = matched.get(arm, {}).get(last)
        shift = "" if point is None else f"k = {point['shift']:g}: "
        lines.append(f"| {arm} | {recipe_text} | " + " | ".join(fid_cell(fid.get(arm, {}).get(str(s))) for s in steps)
                     + f" | {shift}{fid_cell(point) if point else '—'} |")
    return lines


def copy_sample_grids(args) -> dict[str, str]:
    """Each arm's preview grid (the trainer's, CFG 4, same noise) at the last of ``--steps``, into docs/images:
    arm -> its markdown image, for the arms that have one."""
    images, name = {}, f"samples/step_{args.steps[-1]:08d}.png"
    for arm in ARMS:
        folders = [run_dir(arm, args.out)] + ([args.svg_checkpoints] if arm == "SVG" else [])  # borrowed: SVG only
        found = [folder / name for folder in folders if (folder / name).is_file()]
        if found:
            target = IMAGES / f"reproduction_samples_{slug(arm)}.png"
            with atomic_path(target) as tmp:
                tmp.write_bytes(found[0].read_bytes())
            images[arm] = f"![{arm} latents, DiT step {args.steps[-1]}](images/{target.name})"
    return images


def write_docs(results: Results, args) -> None:
    plot(results, args)
    images = copy_sample_grids(args)
    grids = ["", f"Preview grids at DiT step {args.steps[-1]} (EMA, 25 Euler steps, CFG 4, one row per class; "
             f"left to right: {', '.join(images)}):", "", " ".join(images.values())] if images else []
    # The page is read right before writing: another section of it has another author.
    replace_block(PAGE, START, END, markdown(results, args) + "\n" + "\n".join(grids),
                  heading="## Small-scale reproduction (`benchmarks/reproduction.py`)\n\n")
    log(f"wrote {PAGE}")
