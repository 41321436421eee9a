"""`vlm-attn generate`: greedy generation with and without methods, side by side, with the methods' report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_method_args, add_model_args, build_configs, format_report, generate_text, parse_method_args, write
from .checks import check_against_model, check_images, check_method_files, check_model_args
from .input_methods import format_decision


def cmd_generate(args: argparse.Namespace) -> int:
    from .. import apply
    from ..generation import generate
    from ..loading import load_model, sample_image_path
    from ..methods.crops import with_vqa_suffix
    from ..prompting import build_inputs

    spec = parse_method_args(args)  # every method setting checked before the model is loaded
    check_model_args(args)
    check_images([args.image] if args.image else [])
    check_method_files(spec.configs)
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    image = args.image or sample_image_path()
    batch = build_inputs(processor, [image], [with_vqa_suffix(args.prompt, args.vqa)]).to(model.device)
    configs = build_configs(spec, model)  # attention methods; the input-level one is spec.input_config
    check_against_model([*configs, spec.input_config], model, processor)  # model-dependent settings: before generating
    method = spec.input_config
    if not args.no_vanilla or not (configs or method is not None):
        write("== vanilla ==")
        write(generate_text(model, processor, batch, args.max_new_tokens))
    if method is not None:
        result = generate(model, processor, image, args.prompt, methods=[method, *configs], vqa=args.vqa,
                          max_new_tokens=args.max_new_tokens)
        write(f"== {' + '.join(spec.names)} ==")
        write(result.text)
        write("== decision ==")
        write(json.dumps(result.to_dict(), indent=2) if args.json else format_decision(result))
        if result.report:
            write("== report ==")
            write(json.dumps(result.report, indent=2) if args.json else format_report(result.report))
    elif configs:
        with apply(model, configs, processor=processor) as handle:
            text = generate_text(model, processor, batch, args.max_new_tokens)
            report = handle.report()
        write(f"== {' + '.join(spec.names)} ==")
        write(text)
        write("== report ==")
        write(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def register(sub: Any) -> None:
    gen = sub.add_parser(
        "generate",
        help="generate with and without methods, side by side, and report what the methods did",
        description="Greedy generation on one image: prints the vanilla output, the steered output and a per-layer "
                    "report (sinks found, rows and heads redistributed).",
    )
    add_model_args(gen)
    gen.add_argument("--image", default=None, help="image file (default: the bundled sample picture)")
    gen.add_argument("--prompt", default="Please describe this image in detail.", help="user prompt")
    add_method_args(gen)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--no-vanilla", action="store_true", help="skip the unsteered generation")
    gen.add_argument("--json", action="store_true", help="print the report as JSON")
    gen.set_defaults(func=cmd_generate)
