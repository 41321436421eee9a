"""`vlm-attn calibrate-heads`: measure each head's visual sensitivity for PAINT's head-specific modulation."""

from __future__ import annotations

import argparse
from typing import Any

from .checks import check_image_folder, check_model_args, check_positive
from .common import add_model_args, write


def cmd_calibrate_heads(args: argparse.Namespace) -> int:
    from ..loading import load_model
    from ..passes.head_calibration import calibrate_heads

    check_model_args(args)
    check_positive("--n", args.n)
    check_image_folder(args.images)
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    try:
        result = calibrate_heads(model, processor, args.images, n=args.n, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    result.save(args.out)
    top = result.matrix.flatten().topk(min(3, result.matrix.numel()))
    heads = ", ".join(
        f"L{int(i) // result.num_heads}H{int(i) % result.num_heads}={float(v):.3f}" for v, i in zip(*top)
    )
    write(f"head sensitivity {result.num_layers} x {result.num_heads} of {result.model_name} (top: {heads}) -> {args.out}")
    write(f"use it with: PAINTConfig(head_sensitivity={args.out!r}, kappa=1.0)")
    return 0


def register(sub: Any) -> None:
    cal = sub.add_parser(
        "calibrate-heads",
        help="measure each attention head's visual sensitivity (PAINT head-specific modulation)",
        description="One prefill per (image, prompt) pair; s[l, h] = mean image attention mass of the text rows "
                    "after the image. Writes a JSON with the model name, a config hash and the recipe.",
    )
    add_model_args(cal)
    cal.add_argument("--images", default=None, help="folder of calibration images (default: the bundled sample)")
    cal.add_argument("--n", type=int, default=32, help="number of (image, prompt) pairs (default 32)")
    cal.add_argument("--out", default="heads.json", help="where to write the JSON (default heads.json)")
    cal.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cal.set_defaults(func=cmd_calibrate_heads)
