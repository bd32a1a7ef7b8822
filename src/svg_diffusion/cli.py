"""The `svg-diffusion` command: subcommands that parse, validate, call the library and report.

Each subcommand is an ``add_<name>(subparsers)`` function that registers its arguments and a handler; the
handler only translates arguments into one library call. Problems the user can fix (``SVGError``) become
one line on stderr and exit status 2; anything else is a bug and keeps its traceback. Numeric flags have a
:class:`Number` type whose range is checked before the command starts (NaN, infinity or a value out of range
is such a problem).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from pathlib import Path

from .errors import SVGError


class Number:
    """The argparse ``type`` of a numeric flag: converts the text; ``check`` tests the value's range.

    ``main`` checks the ranges after parsing, so a value out of range is reported like every other user error:
    one line naming the flag, the allowed range and the value, exit status 2, before any model is loaded or
    progress bar drawn (raised during parsing, it would get argparse's usage text and an "invalid value" line).
    """

    def __init__(self, kind: type, **bounds: float):
        self.kind, self.bounds = kind, bounds
        self.__name__ = kind.__name__  # argparse names the type in "invalid int value: 'x'"

    def __call__(self, text: str) -> int | float:
        return self.kind(text)

    def check(self, flag: str, value: int | float) -> None:
        from .utils.checks import check_int, check_number

        (check_int if self.kind is int else check_number)(flag, value, **self.bounds)


POSITIVE_INT = Number(int, at_least=1)  # sizes, counts, steps, 1-based layers
NON_NEGATIVE_INT = Number(int, at_least=0)  # seeds, worker processes, "0: all"
POSITIVE = Number(float, above=0)
NON_NEGATIVE = Number(float, at_least=0)


def add_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="extract frozen-encoder patch features of a dataset to a file")
    p.add_argument("--encoder", default="demo-pretrained",
                   help="encoder name (see `svg-diffusion encoders`) or folder; default: the shipped demo encoder")
    p.add_argument("--weights", default=None, help="Meta .pth, HF folder/.safetensors, or our folder")
    p.add_argument("--layer", type=POSITIVE_INT, default=None, help="take the output of this block (1-based) instead of the last")
    p.add_argument("--data", default="fashion_mnist", help="'fashion_mnist' or an image folder")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--image-size", type=POSITIVE_INT, default=32)
    p.add_argument("--limit", type=POSITIVE_INT, default=None, help="encode only the first N images")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=256)
    p.add_argument("--out", required=True, help="output .safetensors with 'features' [N,C,h,w] and 'labels'")
    p.add_argument("--picture", default=None, help="also write a PCA-to-RGB PNG of the first images' features")
    p.add_argument("--flat", action="store_true", help="the image folder has no class subfolders (labels -1)")
    p.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="data-loading worker processes")

    def run(args: argparse.Namespace) -> None:
        from .encode_dataset import encode_dataset

        print(encode_dataset(
            encoder=args.encoder, weights=args.weights, layer=args.layer, data=args.data, split=args.split,
            image_size=args.image_size, limit=args.limit, batch_size=args.batch_size, out=args.out,
            picture=args.picture, labelled=not args.flat, workers=args.workers,
        ))

    p.set_defaults(handler=run)


def add_encoders(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encoders", help="list the encoder names: shipped pretrained weights, then architectures")

    def run(args: argparse.Namespace) -> None:
        from .encoders import ENCODER_CONFIGS, load_vit
        from .utils.shipped import SHIPPED_ENCODERS

        def line(name, cfg, what):
            return f"{name:28s} dim {cfg.embed_dim:5d}  depth {cfg.depth:3d}  patch {cfg.patch_size}  {what}"

        for name in SHIPPED_ENCODERS:
            print(line(name, load_vit(name).config, "pretrained weights, shipped in the package"))
        for name, cfg in ENCODER_CONFIGS.items():
            print(line(name, cfg, "architecture: random weights unless --weights"))

    p.set_defaults(handler=run)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a class-conditional Fashion-MNIST grid from the shipped demo pipeline")
    p.add_argument("--out-dir", default="outputs/demo", help="where demo_grid.png goes")
    p.add_argument("--steps", type=POSITIVE_INT, default=None,
                   help="sampling steps (default: the pipeline's; the shipped one takes 25 Euler steps by default "
                        "and 1-4 steps of its mean_flow sampler: --steps 1 draws in one DiT forward)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p.add_argument("--per-class", type=POSITIVE_INT, default=8, help="samples per class (one row per class)")
    p.add_argument("--pipeline", default="demo-pipeline", help="another pipeline folder (default: the shipped one)")

    def run(args: argparse.Namespace) -> None:
        from .demo import run_demo

        print(run_demo(args.out_dir, steps=args.steps, seed=args.seed, per_class=args.per_class,
                       pipeline=args.pipeline))

    p.set_defaults(handler=run)


def add_train_autoencoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-autoencoder", help="train the SVG autoencoder (residual encoder + decoder + GAN)")
    _add_config_arguments(p, "configs/demo/autoencoder.yaml", resume=True)

    def run(args: argparse.Namespace) -> None:
        from .trainers.autoencoder import AutoencoderTrainConfig, train_autoencoder

        _print_on_rank_0(train_autoencoder(_load_config(AutoencoderTrainConfig, args), resume=args.resume))

    p.set_defaults(handler=run)


def add_eval_autoencoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-autoencoder", help="PSNR, SSIM, LPIPS and rFID of an autoencoder's reconstructions")
    p.add_argument("--autoencoder", required=True, help="folder written by train-autoencoder (out_dir/autoencoder)")
    p.add_argument("--data", default="fashion_mnist", help="'fashion_mnist' or an image folder")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=POSITIVE_INT, default=None, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-rfid", action="store_true", help="skip rFID (the Inception network is the slow part)")
    p.add_argument("--out-dir", required=True, help="where reconstruction.json and reconstruction.png go")

    def run(args: argparse.Namespace) -> None:
        from .evaluation.reconstruction import GRID_FILE, METRICS_FILE, eval_autoencoder, format_metrics_table

        metrics = eval_autoencoder(args.autoencoder, args.data, args.split, args.limit, args.out_dir,
                                   args.batch_size, args.device, rfid=not args.no_rfid)
        print(format_metrics_table({args.autoencoder: metrics}))
        print(f"wrote {args.out_dir}/{METRICS_FILE} and {args.out_dir}/{GRID_FILE}")

    p.set_defaults(handler=run)


def add_convert_official(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-official", help="convert the public SVG weights (howlin/SVG) into a pipeline folder")
    p.add_argument("--autoencoder", required=True, help="the public autoencoder's Lightning .ckpt (or its state dict)")
    p.add_argument("--autoencoder-config", required=True, help="the YAML the autoencoder was trained with")
    p.add_argument("--dinov3", default=None,
                   help="Meta's DINOv3 .pth (or a Hugging Face folder); checked against the checkpoint's copy")
    p.add_argument("--transformer", default=None, help="the public diffusion transformer .pt ({'ema': ...})")
    p.add_argument("--transformer-config", default=None, help="the transformer's YAML (heads, feature_norm)")
    p.add_argument("--stats", default=None, help="dinov3_sp_stats.pt (the latent mean/std)")
    p.add_argument("--out", required=True, help="pipeline folder to create (must not exist or be empty)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also load checkpoints that hold pickled objects besides tensors (this runs code from the "
                        "files: only for files from a source you trust)")

    def run(args: argparse.Namespace) -> None:
        from .official import convert_official

        print(convert_official(args.autoencoder, args.autoencoder_config, args.out, dinov3=args.dinov3,
                               transformer=args.transformer, transformer_config=args.transformer_config,
                               stats=args.stats, trust_pickle=args.trust_pickle))

    p.set_defaults(handler=run)


def _add_config_arguments(p: argparse.ArgumentParser, example: str, resume: bool = False) -> None:
    """--config FILE and --set KEY=VALUE (and --resume for a training), read back by :func:`_load_config`."""
    p.add_argument("--config", required=True,
                   help=f"YAML file (see {example}); its relative paths are relative to its own folder")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in engine.out_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set engine.max_steps=100 (repeatable; a relative path "
                        "is relative to the current folder)")


def _load_config(cls: type, args: argparse.Namespace):
    from .config import load_config

    return load_config(cls, args.config, args.overrides)


def _diffusion_config(args: argparse.Namespace):
    from .trainers.diffusion import DiffusionTrainConfig

    return _load_config(DiffusionTrainConfig, args)


def _print_on_rank_0(message: object) -> None:
    """Print once under torchrun (every rank returns the same result)."""
    if os.environ.get("RANK", "0") == "0":
        print(message)


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the latent diffusion transformer (torchrun for several processes)")
    _add_config_arguments(p, "configs/demo/diffusion.yaml", resume=True)

    def run(args: argparse.Namespace) -> None:
        from .trainers.diffusion import train_diffusion

        _print_on_rank_0(train_diffusion(_diffusion_config(args), resume=args.resume))

    p.set_defaults(handler=run)


def add_cache_latents(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache-latents", help="encode a training config's images (and mirrors, with data.hflip) to a cache")
    _add_config_arguments(p, "configs/demo/diffusion.yaml")
    p.add_argument("--out", default=None, help="cache folder (default: the config's latent_cache)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="stored precision (bfloat16: half the disk, ~0.4%% relative error per value)")
    p.add_argument("--shard-size", type=POSITIVE_INT, default=4096, help="images per shard file")

    def run(args: argparse.Namespace) -> None:
        from .trainers.diffusion import cache_training_latents

        _print_on_rank_0(cache_training_latents(_diffusion_config(args), args.out, args.dtype, args.shard_size))

    p.set_defaults(handler=run)


def add_latent_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latent-stats", help="per-channel mean/std of a training config's latents, to a file")
    _add_config_arguments(p, "configs/demo/diffusion.yaml")
    p.add_argument("--out", required=True, help="output latent_stats.safetensors")

    def run(args: argparse.Namespace) -> None:
        from .trainers.diffusion import training_latent_statistics

        _print_on_rank_0(training_latent_statistics(_diffusion_config(args), args.out))

    p.set_defaults(handler=run)


def add_fit_latent_transform(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-latent-transform",
                       help="fit a training config's latent transform (e.g. PCA) over its latents, to a folder")
    _add_config_arguments(p, "configs/demo/diffusion.yaml")
    p.add_argument("--out", default=None, help="output folder (default: the config's latent_transform.path)")
    p.add_argument("--kind", choices=["per_channel", "pca"], default=None, help="override latent_transform.kind")
    k = p.add_mutually_exclusive_group()
    k.add_argument("--components", type=POSITIVE_INT, default=None, help="PCA: keep this many directions")
    k.add_argument("--explained-variance", type=Number(float, above=0, at_most=1), default=None,
                   help="PCA: keep the fewest directions that hold this fraction of the variance")

    def run(args: argparse.Namespace) -> None:
        from .diffusion.latent_transform import load_latent_transform
        from .trainers.diffusion import fit_training_transform

        config = _diffusion_config(args)
        flags = {"kind": args.kind, "components": args.components, "explained_variance": args.explained_variance}
        if any(value is not None for value in flags.values()):
            given = {key: value for key, value in flags.items() if value is not None}
            if "components" in given or "explained_variance" in given:  # one choice of k replaces the other
                given = {"components": None, "explained_variance": None, **given}
            try:
                settings = dataclasses.replace(config.latent_transform, **given)
            except ValueError as err:
                raise SVGError(str(err)) from None
            config = dataclasses.replace(config, latent_transform=settings)
        folder = fit_training_transform(config, args.out)
        transform = load_latent_transform(folder)
        _print_on_rank_0(f"{folder}: {transform.kind}, {transform.latent_channels} -> {transform.channels} channels"
                         + (f", {transform.explained_variance:.4f} of the variance"
                            if transform.kind == "pca" else ""))

    p.set_defaults(handler=run)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="the model folder of a training run's checkpoint (a run stopped early, or "
                                      "still going): a pipeline or an autoencoder")
    p.add_argument("run", help="the run's out_dir (holds config.yaml and checkpoints/)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--step", type=POSITIVE_INT, default=None, help="the checkpoint's step (default: the latest)")
    p.add_argument("--autoencoder", default=None,
                   help="diffusion runs: another autoencoder of the same latent (a fine-tuned decoder) for the pipeline")

    def run(args: argparse.Namespace) -> None:
        from .export import export_run

        print(export_run(args.run, args.out, args.step, args.autoencoder))

    p.set_defaults(handler=run)


def add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="class-conditional samples of a pipeline: a grid PNG, an image folder or an .npz")
    p.add_argument("--pipeline", required=True, help="pipeline folder (train's out_dir/pipeline)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", default=None, help="grid PNG: one labelled row per class")
    out.add_argument("--out-dir", default=None, help="folder of 000000.png, ... and labels.txt")
    out.add_argument("--npz", default=None, help=".npz with arr_0 (uint8 NHWC) and labels, for FID")
    p.add_argument("--classes", nargs="+", default=None, help="class indices or names (default: all)")
    p.add_argument("--per-class", type=POSITIVE_INT, default=8, help="samples per class (grid rows are this long)")
    p.add_argument("--num", type=POSITIVE_INT, default=None, help="folder/npz: this many samples, cycling through the classes")
    p.add_argument("--steps", type=POSITIVE_INT, default=None,
                   help="sampler steps (default: the pipeline's; mean_flow: any N >= 1)")
    p.add_argument("--cfg", type=NON_NEGATIVE, default=None,
                   help="guidance scale >= 0 (default: the pipeline's; 1 = none, 0 = unconditional; mean_flow: the "
                        "model's guidance input)")
    p.add_argument("--sampler", default=None,
                   help="euler, heun, adams_bashforth, dpm_solver_2m, euler_maruyama, or mean_flow (a MeanFlow "
                        "pipeline: N steps of its average velocity); default: the pipeline's")
    p.add_argument("--shift", type=POSITIVE, default=None, help="time shift k > 0 of the sampling grid (SD3 convention)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="sample i's noise depends only on (seed, i)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64)
    p.add_argument("--bf16", action="store_true",
                   help="sample under bfloat16 autocast (the transformer and the decoder): faster where bf16 is; "
                        "the demo's images move by ~0.002 on average in [-1, 1]")
    p.add_argument("--two-pass-cfg", action="store_true",
                   help="guided and unguided branches as two forwards, not one of twice the batch "
                        "(faster on an idle CPU; the same samples to fp32 rounding)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    def run(args: argparse.Namespace) -> None:
        from .diffusion import get_sampler
        from .pipeline import SVGPipeline
        from .sample_writer import class_labels, write_samples
        from .training.distributed import setup_distributed

        if args.num is not None and args.out is not None:
            raise SVGError("--num is for --out-dir and --npz; a grid has --per-class samples of each class")
        if args.sampler is not None:
            get_sampler(args.sampler)  # an unknown name fails here, not after loading and with a progress bar
        place = setup_distributed(args.device)
        pipe = SVGPipeline.from_pretrained(args.pipeline, device=place.device)
        # a sampler the transformer cannot run (or its guidance) fails here, before sampling
        pipe.sampling_settings(args.steps, args.cfg, args.shift, args.sampler)
        labels = class_labels(pipe, args.classes and [int(c) if c.isdigit() else c for c in args.classes],
                              args.per_class, args.num)
        path = write_samples(pipe, labels, grid=args.out, folder=args.out_dir, npz=args.npz, nrow=args.per_class,
                             seed=args.seed, batch_size=args.batch_size, num_steps=args.steps,
                             guidance_scale=args.cfg, sampler=args.sampler, shift=args.shift,
                             precision="bf16" if args.bf16 else "fp32", batched_cfg=not args.two_pass_cfg,
                             progress=True)
        _print_on_rank_0(path)

    p.set_defaults(handler=run)


def add_pretrain_encoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain-encoder", help="self-supervised (DINO/iBOT) pretraining of a ViT encoder")
    _add_config_arguments(p, "configs/demo/pretrain_encoder.yaml", resume=True)
    p.add_argument("--export", metavar="CHECKPOINT", default=None,
                   help="do not train: export the teacher of this training checkpoint to export_dir")

    def run(args: argparse.Namespace) -> None:
        from .trainers.encoder import PretrainEncoderConfig, export_checkpoint, pretrain_encoder

        config = _load_config(PretrainEncoderConfig, args)
        if args.export:
            print(export_checkpoint(args.export, config.export_path))
        else:
            _print_on_rank_0(pretrain_encoder(config, resume=args.resume))

    p.set_defaults(handler=run)


def add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="linear-probe and k-NN accuracy of frozen encoder features (fixed protocol)")
    p.add_argument("--encoder", action="append", required=True,
                   help="encoder name (see `svg-diffusion encoders`), folder, or 'pixels' (raw-pixel baseline); "
                        "repeatable")
    p.add_argument("--weights", default=None, help="weights for a single --encoder (as `encode`)")
    p.add_argument("--layer", type=POSITIVE_INT, default=None, help="take the output of this block (1-based)")
    p.add_argument("--data", default="fashion_mnist", help="'fashion_mnist' or a labelled image folder")
    p.add_argument("--image-size", type=POSITIVE_INT, default=32)
    p.add_argument("--train", type=NON_NEGATIVE_INT, default=10000, help="first N images of the train split (0: all)")
    p.add_argument("--test", type=NON_NEGATIVE_INT, default=10000, help="first N images of the test split (0: all)")
    p.add_argument("--features", nargs="+", choices=["pooled", "patch"], default=["pooled", "patch"],
                   help="pooled: [CLS, mean patch token]; patch: the flattened patch-token map")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=256)
    p.add_argument("--out", default=None, help="also write the rows to this JSON file")

    def run(args: argparse.Namespace) -> None:
        from .evaluation.probe import format_probe_table, probe_encoders

        rows = probe_encoders(args.encoder, weights=args.weights, layer=args.layer, data=args.data,
                              image_size=args.image_size, num_train=args.train or None, num_test=args.test or None,
                              modes=tuple(args.features), batch_size=args.batch_size, out=args.out)
        print(format_probe_table(rows))

    p.set_defaults(handler=run)


def add_diagnose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="why a pipeline generates what it does: rFID floors, noise robustness, "
                                        "latent statistics of its samples, the latent's PCA spectrum",
                       description="See docs/evaluation.md (Diagnosing a pipeline) for what each line means.")
    p.add_argument("--pipeline", required=True, help="pipeline folder (or demo-pipeline for the shipped one)")
    p.add_argument("--real", required=True,
                   help="reference images: fashion_mnist:test, an image folder or an .npz (first --limit images)")
    p.add_argument("--limit", type=POSITIVE_INT, default=2000, help="real images to use (default 2000)")
    p.add_argument("--samples", type=POSITIVE_INT, default=None, help="samples to draw (default: as many as real images)")
    p.add_argument("--steps", type=POSITIVE_INT, default=None, help="sampling steps (default: the pipeline's)")
    p.add_argument("--components", type=POSITIVE_INT, default=None,
                   help="k of the diagnostic PCA (default: the pipeline's PCA k, else 97%% of the variance)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=100)
    p.add_argument("--out-dir", default="outputs/diagnose", help="where diagnose.json and spectrum.png go")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    def run(args: argparse.Namespace) -> None:
        import json

        from .evaluation.diagnose import JSON_FILE, SPECTRUM_FILE, diagnose, format_diagnosis
        from .pipeline import SVGPipeline
        from .training.distributed import setup_distributed

        pipe = SVGPipeline.from_pretrained(args.pipeline, device=setup_distributed(args.device).device)
        results = diagnose(pipe, args.real, limit=args.limit, num_samples=args.samples, pca_components=args.components,
                           seed=args.seed, num_steps=args.steps, batch_size=args.batch_size, out_dir=args.out_dir)
        if args.json:
            print(json.dumps(results))
            return
        print(format_diagnosis(results))
        print(f"wrote {Path(args.out_dir) / JSON_FILE} and {Path(args.out_dir) / SPECTRUM_FILE}")

    p.set_defaults(handler=run)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="FID, precision/recall, Inception Score, Fréchet distance in encoder space of image sources",
        description="Sources: an image folder, an .npz with uint8 NHWC images under 'arr_0', fashion_mnist:test "
                    "or fashion_mnist:train, or (FID only) an .npz of statistics 'mu' and 'sigma'. "
                    "See docs/evaluation.md.",
    )
    p.add_argument("metrics", metavar="METRICS",
                   help="comma-separated, from fid, pr (precision/recall), is (Inception Score: needs "
                        "--inception-head), fd-encoder; or 'stats' to write the Inception statistics of --real to --out")
    p.add_argument("--real", default=None, help="the reference images (or statistics); not needed by 'is' alone")
    p.add_argument("--fake", default=None, help="the generated images (or statistics)")
    p.add_argument("--out", default=None, help="stats: the .npz to write")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of 'name value' lines")
    p.add_argument("--limit", type=POSITIVE_INT, default=None,
                   help="use the first N images of each image source (a statistics file is used whole)")
    p.add_argument("--image-size", type=POSITIVE_INT, default=32, help="image size of fashion_mnist:<split> sources")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64)
    p.add_argument("--k", type=POSITIVE_INT, default=3, help="pr: neighbours that set each point's radius")
    p.add_argument("--inception-head", default=None, metavar="FILE",
                   help="is: weights file with the TF Inception's fc.weight [1008, 2048] (e.g. pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth); see docs/evaluation.md")
    p.add_argument("--splits", type=POSITIVE_INT, default=10, help="is: splits of the samples (mean and std over them)")
    p.add_argument("--encoder", default="demo-pretrained",
                   help="fd-encoder: encoder name or folder; default the shipped demo encoder")
    p.add_argument("--weights", default=None, help="fd-encoder: weights file for a named encoder")
    p.add_argument("--layer", type=POSITIVE_INT, default=None, help="fd-encoder: take this block's output (1-based)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached Inception features")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder (default $SVG_DIFFUSION_CACHE or ~/.cache/svg_diffusion)")

    def run(args: argparse.Namespace) -> None:
        import json

        from .evaluation import evaluate, write_stats

        common = dict(image_size=args.image_size, limit=args.limit, batch_size=args.batch_size,
                      device=None if args.device == "auto" else args.device, cache=not args.no_cache,
                      cache_dir=args.cache_dir)
        if args.metrics == "stats":
            if args.out is None or args.real is None:
                raise SVGError("stats needs --real SOURCE and --out FILE.npz")
            stats = write_stats(args.real, args.out, **common)
            print(f"wrote {args.out}: Inception statistics of {stats.count} images of {args.real}")
            return
        if args.fake is None:
            raise SVGError(f"{args.metrics} needs --fake (the generated images)")
        result = evaluate(args.metrics, args.real, args.fake, k=args.k, inception_head=args.inception_head,
                          splits=args.splits, encoder=args.encoder, weights=args.weights, layer=args.layer, **common)
        if args.json:
            print(json.dumps(result))
        else:
            for name, value in result.items():
                print(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")

    p.set_defaults(handler=run)


def add_feature_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feature-cache", help="list or prune the cached Inception features of evaluate/FID",
                       description="Lists the entries, least recently used first; --older-than/--clear delete.")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder (default $SVG_DIFFUSION_CACHE or ~/.cache/svg_diffusion)")
    p.add_argument("--older-than", type=NON_NEGATIVE, default=None, metavar="DAYS",
                   help="delete the entries not used for more than DAYS days")
    p.add_argument("--clear", action="store_true", help="delete every entry")

    def run(args: argparse.Namespace) -> None:
        from .evaluation import FeatureCache

        store = FeatureCache(args.cache_dir)
        if args.clear or args.older_than is not None:
            removed = store.prune(0.0 if args.clear else args.older_than)
            print(f"removed {len(removed)} entries ({sum(e.size_bytes for e in removed) / 2**20:.1f} MiB) "
                  f"from {store.directory}")
            return
        entries = store.entries()
        for entry in entries:
            print(f"{entry.idle_days:7.1f} days  {entry.count:7d} images  {entry.size_bytes / 2**20:8.1f} MiB  "
                  f"{entry.source}")
        print(f"{len(entries)} entries, {sum(e.size_bytes for e in entries) / 2**20:.1f} MiB in {store.directory}")

    p.set_defaults(handler=run)


COMMANDS = [add_demo, add_encode, add_encoders, add_train_autoencoder, add_eval_autoencoder, add_convert_official,
            add_train, add_cache_latents, add_latent_stats, add_fit_latent_transform, add_export, add_sample,
            add_pretrain_encoder, add_probe, add_evaluate, add_diagnose, add_feature_cache]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svg-diffusion", description="SVG: latent diffusion on frozen self-supervised features, without a VAE."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"svg-diffusion: warning: {message}\n"


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Range-check the value of every numeric flag of ``args.command`` (see :class:`Number`)."""
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for action in commands.choices[args.command]._actions:
        value = getattr(args, action.dest, None)
        if isinstance(action.type, Number) and value is not None:
            action.type.check(action.option_strings[-1], value)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        check_numbers(parser, args)
        args.handler(args)
    except SVGError as err:
        print(f"svg-diffusion {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svg-diffusion {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
