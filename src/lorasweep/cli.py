"""The `lorasweep` command: parse, call, print. Errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    from .demo import print_demo, run_demo

    print_demo(run_demo(rank=args.rank, alpha=args.alpha))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorasweep", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lorasweep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="LoRA vs full fine-tuning on the packaged MiniLM: parameters and memory")
    demo.add_argument("--rank", type=int, default=8)
    demo.add_argument("--alpha", type=float, default=16)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lorasweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
