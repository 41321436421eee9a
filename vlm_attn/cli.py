"""The `vlm-attn` command line: a thin layer over the public API.

    vlm-attn generate --model tiny-llava --method var            # no download: tiny random model + sample image
    vlm-attn generate --model llava-hf/llava-1.5-7b-hf --image cat.jpg --prompt "Describe it." --method var
    vlm-attn calibrate-sinks --model Qwen/Qwen2.5-VL-3B-Instruct --image a.jpg --out sinks.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger("vlm_attn.cli")


def _write(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _parse_dims(value: str) -> tuple[int, ...] | str:
    """'1415,2533' -> (1415, 2533); anything else is a path to a calibration JSON."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return value


def build_configs(args: argparse.Namespace, model: Any) -> list[Any]:
    """Method configs from --method, --method-config and the per-method flags."""
    from .loading import demo_settings
    from .methods.registry import config_classes

    classes = config_classes()
    overrides: dict[str, dict[str, Any]] = {}
    if args.method_config:
        path = Path(args.method_config)
        if not path.is_file():
            raise SystemExit(f"error: --method-config {path} does not exist")
        overrides = json.loads(path.read_text())
    configs = []
    for name in args.method or []:
        if name not in classes:
            raise SystemExit(f"error: unknown method {name!r}; choose from: {', '.join(sorted(classes))}")
        kwargs = dict(overrides.get(name, {}))
        if name == "var":
            demo = demo_settings(model)
            if demo and args.sink_dims is None and "sink_dims" not in kwargs:
                logger.warning(
                    "tiny random model: using its demo sink dims %s and tau %s (random weights have no massive "
                    "activations; this shows the machinery, not quality)", demo["sink_dims"], demo["tau"],
                )
                kwargs.setdefault("sink_dims", tuple(demo["sink_dims"]))
                kwargs.setdefault("tau", demo["tau"])
            for flag in ("p", "rho", "tau"):
                if getattr(args, flag) is not None:
                    kwargs[flag] = getattr(args, flag)
            if args.sink_dims is not None:
                kwargs["sink_dims"] = _parse_dims(args.sink_dims)
        try:
            configs.append(classes[name](**kwargs))
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"error: bad settings for {name}: {exc}") from None
    return configs


def _generate_text(model: Any, processor: Any, batch: Any, max_new_tokens: int) -> str:
    import torch

    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    return processor.batch_decode(new, skip_special_tokens=True)[0].strip()


def format_report(report: dict[str, Any]) -> str:
    """A small text table of what each method did, per layer."""
    lines = [f"image tokens per sample: {report.get('image_tokens')}"]
    for name, data in report.items():
        if not isinstance(data, dict):
            continue
        if not data.get("active", True):
            lines.append(f"{name}: inactive ({data.get('reason', '')})")
            continue
        per_layer = {k: v for k, v in data.items() if isinstance(v, dict)}
        if not per_layer:
            lines.append(f"{name}: {data}")
            continue
        cols = list(per_layer)
        lines.append(f"{name}:")
        lines.append("  layer  " + "  ".join(f"{c:>19}" for c in cols))
        for layer in sorted(next(iter(per_layer.values()))):
            lines.append(f"  {layer:>5}  " + "  ".join(f"{per_layer[c].get(layer, 0):>19}" for c in cols))
        for key, value in data.items():
            if not isinstance(value, (dict, list)) and key != "active":
                lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    from . import apply
    from .loading import load_model, sample_image_path
    from .prompting import build_inputs

    model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    image = args.image or sample_image_path()
    batch = build_inputs(processor, [image], [args.prompt]).to(model.device)
    configs = build_configs(args, model)
    if not args.no_vanilla or not configs:
        _write("== vanilla ==")
        _write(_generate_text(model, processor, batch, args.max_new_tokens))
    if configs:
        with apply(model, configs) as handle:
            text = _generate_text(model, processor, batch, args.max_new_tokens)
            report = handle.report()
        _write(f"== {' + '.join(args.method)} ==")
        _write(text)
        _write("== report ==")
        _write(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_calibrate_sinks(args: argparse.Namespace) -> int:
    from .loading import load_model, sample_image_path
    from .methods.sink_calibration import calibrate_sinks

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
    _write(f"sink dims {result.sink_dims} (peak |x_d|/RMS: "
           + ", ".join(f"{d}: {result.peak_ratio[d]:.1f}" for d in result.sink_dims) + f") -> {path}")
    _write(f"use them with: --method var --sink-dims {path}   or   VARConfig(sink_dims={str(path)!r})")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="hub id, local directory saved with save_pretrained, or tiny-<family> "
                        "(random weights built offline: a demo of the machinery, not of quality)")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: where from_pretrained puts it)")
    p.add_argument("--dtype", default=None, help="auto, float32, float16 or bfloat16 (default: auto)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm-attn",
        description="Training-free attention steering for HuggingFace vision-language models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="generate with and without methods, side by side, and report what the methods did",
        description="Greedy generation on one image: prints the vanilla output, the steered output and a per-layer "
                    "report (sinks found, rows and heads redistributed).",
    )
    _add_model_args(gen)
    gen.add_argument("--image", default=None, help="image file (default: the bundled sample picture)")
    gen.add_argument("--prompt", default="Please describe this image in detail.", help="user prompt")
    gen.add_argument("--method", action="append", default=None,
                     help="method to apply (repeatable: several compose in one apply); e.g. var")
    gen.add_argument("--method-config", default=None,
                     help='JSON file of per-method settings, e.g. {"var": {"p": 0.6, "rho": 0.5}}')
    gen.add_argument("--sink-dims", default=None,
                     help="VAR sink dims as '1415,2533' or a JSON from calibrate-sinks (default: known table)")
    gen.add_argument("--p", type=float, default=None, help="VAR: fraction of sink attention moved (paper 0.6)")
    gen.add_argument("--rho", type=float, default=None, help="VAR: min visual non-sink share (paper 0.5)")
    gen.add_argument("--tau", type=float, default=None, help="VAR: sink threshold on |x_d|/RMS(x) (paper 20)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--no-vanilla", action="store_true", help="skip the unsteered generation")
    gen.add_argument("--json", action="store_true", help="print the report as JSON")
    gen.set_defaults(func=cmd_generate)

    cal = sub.add_parser(
        "calibrate-sinks",
        help="discover VAR's sink dimensions for a model not in the known table",
        description="One forward on calibration images; keeps the hidden dims where |x_d|/RMS(x) exceeds the "
                    "threshold for a few tokens in at least --min-layer-fraction of the layers >= 2.",
    )
    _add_model_args(cal)
    cal.add_argument("--image", action="append", default=None, help="calibration image (repeatable; default sample)")
    cal.add_argument("--prompt", default="Please describe this image in detail.")
    cal.add_argument("--threshold", type=float, default=20.0, help="massive-activation ratio (default 20 = VAR tau)")
    cal.add_argument("--min-layer-fraction", type=float, default=0.5)
    cal.add_argument("--out", default="sinks.json", help="where to write the JSON (default sinks.json)")
    cal.set_defaults(func=cmd_calibrate_sinks)
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
