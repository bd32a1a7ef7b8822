"""The `svg-diffusion` command: subcommands that parse, validate, call the library and report.

Each subcommand is an ``add_<name>(subparsers)`` function that registers its arguments and a handler; the
handler only translates arguments into one library call. Problems the user can fix (``SVGError``) become
one line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .errors import SVGError


def add_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="extract frozen-encoder patch features of a dataset to a file")
    p.add_argument("--encoder", default=None,
                   help="encoder name (see `svg-diffusion encoders`) or folder; default: the shipped demo encoder")
    p.add_argument("--weights", default=None, help="Meta .pth, HF folder/.safetensors, or our folder")
    p.add_argument("--layer", type=int, default=None, help="take the output of this block (1-based) instead of the last")
    p.add_argument("--data", default="fashion_mnist", help="'fashion_mnist' or an image folder")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="encode only the first N images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="output .safetensors with 'features' [N,C,h,w] and 'labels'")
    p.add_argument("--picture", default=None, help="also write a PCA-to-RGB PNG of the first images' features")
    p.add_argument("--flat", action="store_true", help="the image folder has no class subfolders (labels -1)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")

    def run(args: argparse.Namespace) -> None:
        from .demo import demo_encoder
        from .features import encode_dataset

        print(encode_dataset(
            encoder=args.encoder or demo_encoder(), weights=args.weights, layer=args.layer, data=args.data, split=args.split,
            image_size=args.image_size, limit=args.limit, batch_size=args.batch_size, out=args.out,
            picture=args.picture, labelled=not args.flat, workers=args.workers,
        ))

    p.set_defaults(handler=run)


def add_encoders(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encoders", help="list the named encoder architectures")

    def run(args: argparse.Namespace) -> None:
        from .encoders import ENCODER_CONFIGS

        for name, cfg in ENCODER_CONFIGS.items():
            print(f"{name:28s} dim {cfg.embed_dim:5d}  depth {cfg.depth:3d}  patch {cfg.patch_size}")

    p.set_defaults(handler=run)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the README's main job on the embedded default")
    p.add_argument("--out-dir", default="outputs/demo")

    def run(args: argparse.Namespace) -> None:
        from .demo import run_demo

        print(run_demo(args.out_dir))

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

    def run(args: argparse.Namespace) -> None:
        from .official import convert_official

        print(convert_official(args.autoencoder, args.autoencoder_config, args.out, dinov3=args.dinov3,
                               transformer=args.transformer, transformer_config=args.transformer_config,
                               stats=args.stats))

    p.set_defaults(handler=run)


COMMANDS = [add_demo, add_encode, add_encoders, add_convert_official]


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
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
