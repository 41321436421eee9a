"""The `vlm-attn` command line: a thin layer over the public API and the eval package.

    vlm-attn generate --model tiny-llava --method var            # no download: tiny random model + sample image
    vlm-attn generate --model llava-hf/llava-1.5-7b-hf --image cat.jpg --prompt "Describe it." --method var
    vlm-attn calibrate-sinks --model Qwen/Qwen2.5-VL-3B-Instruct --image a.jpg --out sinks.json

Each subcommand lives in `vlm_attn/commands/<name>.py` and registers its own parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from .commands import COMMANDS


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm-attn",
        description="Training-free attention steering for HuggingFace vision-language models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vlm_attn.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
