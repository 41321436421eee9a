"""`vlm-attn calibrate-sinks`: discover VAR's sink dimensions for a model outside the known table."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UserError
from .checks import check_images, check_model_args
from .common import add_model_args, write


def cmd_calibrate_sinks(args: argparse.Namespace) -> int:
    from ..loading import load_model, sample_image_path
    from ..passes.sink_calibration import calibrate_sinks

    check_model_args(args)
    check_images(args.image)
    if not args.threshold > 0:
        raise UserError(f"--threshold must be > 0 (VAR's tau is 20), got {args.threshold}")
    if not 0 < args.min_layer_fraction <= 1:
        raise UserError(f"--min-layer-fraction must be in (0, 1], got {args.min_layer_fraction}")
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    images = args.image or [sample_image_path()]
    try:
        result = calibrate_sinks(
            model, processor, images, prompt=args.prompt, threshold=args.threshold,
            min_layer_fraction=args.min_layer_fraction,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    path = result.save(args.out)
    write(f"sink dims {result.sink_dims} (peak |x_d|/RMS: "
           + ", ".join(f"{d}: {result.peak_ratio[d]:.1f}" for d in result.sink_dims) + f") -> {path}")
    tau = "" if args.threshold == 20 else f" --tau {args.threshold:g}"
    tau_kw = "" if args.threshold == 20 else f", tau={args.threshold:g}"
    write(f"use them with: --method var --sink-dims {path}{tau}   or   VARConfig(sink_dims={str(path)!r}{tau_kw})")
    if args.threshold != 20:
        write(f"(tau must match the calibration threshold {args.threshold:g}: with the paper's tau 20 no token of "
              "this model counts as a sink)")
    return 0


def register(sub: Any) -> None:
    cal = sub.add_parser(
        "calibrate-sinks",
        help="discover VAR's sink dimensions for a model not in the known table",
        description="One forward on calibration images; keeps the hidden dims where |x_d|/RMS(x) exceeds the "
                    "threshold for a few tokens in at least --min-layer-fraction of the layers >= 2.",
    )
    add_model_args(cal)
    cal.add_argument("--image", action="append", default=None, help="calibration image (repeatable; default sample)")
    cal.add_argument("--prompt", default="Please describe this image in detail.")
    cal.add_argument("--threshold", type=float, default=20.0, help="massive-activation ratio (default 20 = VAR tau)")
    cal.add_argument("--min-layer-fraction", type=float, default=0.5)
    cal.add_argument("--out", default="sinks.json", help="where to write the JSON (default sinks.json)")
    cal.set_defaults(func=cmd_calibrate_sinks)
