"""`vlm-attn generate`: greedy generation with and without methods, side by side, with the methods' report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import add_model_args, build_configs, format_report, generate_text, write
from .input_methods import add_input_method_args, build_input_config, format_decision, split_methods


def cmd_generate(args: argparse.Namespace) -> int:
    from .. import apply
    from ..generation import generate
    from ..loading import load_model, sample_image_path
    from ..methods.crops import with_vqa_suffix
    from ..prompting import build_inputs

    model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    image = args.image or sample_image_path()
    input_name, attention_names = split_methods(args.method)
    batch = build_inputs(processor, [image], [with_vqa_suffix(args.prompt, args.vqa)]).to(model.device)
    # Input-level methods (funnel, vicrop) are not attention configs: build those from the other names only.
    configs = build_configs(argparse.Namespace(**{**vars(args), "method": attention_names}), model)
    if not args.no_vanilla or not (configs or input_name):
        write("== vanilla ==")
        write(generate_text(model, processor, batch, args.max_new_tokens))
    if input_name is not None:
        overrides = json.loads(Path(args.method_config).read_text()) if args.method_config else {}
        method = build_input_config(input_name, args, overrides)
        result = generate(model, processor, image, args.prompt, methods=[method, *configs], vqa=args.vqa,
                          max_new_tokens=args.max_new_tokens)
        write(f"== {' + '.join(args.method)} ==")
        write(result.text)
        write("== decision ==")
        write(json.dumps(result.to_dict(), indent=2) if args.json else format_decision(result))
        if result.report:
            write("== report ==")
            write(json.dumps(result.report, indent=2) if args.json else format_report(result.report))
    elif configs:
        with apply(model, configs) as handle:
            text = generate_text(model, processor, batch, args.max_new_tokens)
            report = handle.report()
        write(f"== {' + '.join(args.method)} ==")
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
    gen.add_argument("--method", action="append", default=None,
                     help="method to apply (repeatable: several compose in one apply); e.g. var. Input-level: "
                          "funnel (Visual Funnel) or vicrop (ViCrop rel-att), composable with attention methods")
    gen.add_argument("--method-config", default=None,
                     help='JSON file of per-method settings, e.g. {"var": {"p": 0.6, "rho": 0.5}}')
    gen.add_argument("--sink-dims", default=None,
                     help="VAR sink dims as '1415,2533' or a JSON from calibrate-sinks (default: known table)")
    gen.add_argument("--p", type=float, default=None, help="VAR: fraction of sink attention moved (paper 0.6)")
    gen.add_argument("--rho", type=float, default=None, help="VAR: min visual non-sink share (paper 0.5)")
    gen.add_argument("--tau", type=float, default=None, help="VAR: sink threshold on |x_d|/RMS(x) (paper 20)")
    add_input_method_args(gen)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--no-vanilla", action="store_true", help="skip the unsteered generation")
    gen.add_argument("--json", action="store_true", help="print the report as JSON")
    gen.set_defaults(func=cmd_generate)
