"""`vlm-attn inspect`: a picture of where the model looks, with what the method decided drawn over it.

Each method that can be pictured has a panel builder in `PANEL_BUILDERS` (name -> function returning rows of panels
and a text summary); the figure is the rows top to bottom, each row's panels side by side
(`vlm_attn.viz.render_rows`). The Funnel draws its anchoring heatmap with the focal / alpha1 / alpha2 boxes (white,
cyan, green), ViCrop its question, general and relative maps with the crop box, and the attention methods (VAR,
PAI, PAINT) one row per layer: the last prompt row's attention over the image before and after the method and the
change (after minus before, blue - white - red), with VAR's visual sink tokens outlined in red
(`vlm_attn.inspect_attention`). Every heatmap has its colour bar and covers the part of the image the model saw
(`FamilyAdapter.seen_region`; the rest is greyed); boxes are named in a legend under their panel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import UserError
from .checks import check_against_model, check_images, check_method_files, check_model_args
from .common import add_method_args, add_model_args, build_configs, parse_method_args, write
from .input_methods import format_decision

# (model, processor, image, args) -> (rows of vlm_attn.viz.Panel, summary)
PanelBuilder = Callable[[Any, Any, Image.Image, argparse.Namespace], tuple[list[list[Any]], dict[str, Any]]]
ATTENTION_METHODS = ("pai", "paint", "var")


def funnel_panels(model: Any, processor: Any, image: Image.Image, args: argparse.Namespace) -> tuple[list, dict]:
    """One row: the anchoring heatmap with the portfolio boxes; with --crops, the three crops beside it."""
    from ..generation import funnel_decide
    from ..methods.funnel import crop_portfolio
    from ..viz import Panel

    decision = funnel_decide(model, processor, image, args.prompt, args.method_spec.input_config)
    p = decision.portfolio
    panels = [Panel(image, decision.attention, boxes=p.boxes, region=decision.region,
                    box_labels=("focal", f"alpha1 x{p.alpha1:.2f}", f"alpha2 x{p.alpha2:.2f}"),
                    title=f"funnel L{decision.anchor.layer} H={p.entropy:.2f}")]
    if args.crops:
        names = ("focal", f"alpha1 x{p.alpha1:.2f}", f"alpha2 x{p.alpha2:.2f}")
        panels += [Panel(c, title=n) for c, n in zip(crop_portfolio(image, p)[1:], names)]
    summary = {"method": "funnel", "layer": decision.anchor.layer, "grid": list(decision.anchor.grid.shape),
               "entropy": p.entropy, "alpha1": p.alpha1, "alpha2": p.alpha2, "focal_side": p.focal_side,
               "region": list(decision.region), "boxes": [list(b) for b in p.boxes],
               "steered": decision.anchor.steered}
    return [panels], summary


def vicrop_panels(model: Any, processor: Any, image: Image.Image, args: argparse.Namespace) -> tuple[list, dict]:
    """One row: ViCrop's question map, general map and relative map, the crop box on each."""
    from ..generation import vicrop_decide
    from ..viz import Panel

    decision = vicrop_decide(model, processor, image, args.prompt, args.method_spec.input_config, args.vqa)
    layer = decision.question.layer
    maps = ((decision.question.attention, f"question L{layer}"), (decision.general.attention, "general"),
            (decision.relative, "relative"))
    panels = [Panel(image, grid, boxes=[decision.box], box_labels=("crop",), region=decision.region, title=title)
              for grid, title in maps]
    summary = {"method": "vicrop", "layer": layer, "grid": list(decision.question.grid.shape),
               "bbox_size": decision.bbox_size, "region": list(decision.region), "boxes": [list(decision.box)],
               "steered": decision.question.steered}
    return [panels], summary


def parse_layers(value: str | None) -> list[int] | None:
    """'2,5' -> [2, 5]; None stays None (the default layers)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise SystemExit(f"error: --layers takes comma-separated layer numbers such as 2,5, got {value!r}")
    return [int(p) for p in parts]


def attention_panels(model: Any, processor: Any, image: Image.Image, args: argparse.Namespace) -> tuple[list, dict]:
    """One row per layer: the last prompt row's image attention before and after the method, sinks marked."""
    from ..inspection import inspect_attention

    try:
        configs = args.attention_configs
        look = inspect_attention(model, processor, image, args.prompt, configs,
                                 layers=parse_layers(args.layers), vqa=args.vqa)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return look.panel_rows(), {"method": args.method, **look.to_dict(maps=False)}


PANEL_BUILDERS: dict[str, PanelBuilder] = {
    "funnel": funnel_panels, "vicrop": vicrop_panels, **{name: attention_panels for name in ATTENTION_METHODS},
}


def format_layers(summary: dict[str, Any]) -> str:
    """One line per inspected layer: image mass before -> after, and the sinks found."""
    lines = [f"{summary['method']}: grid {summary['grid']}, last prompt row, head mean"]
    for item in summary["layers"]:
        sinks = (f", {len(item['sink_cells'])} visual sink(s) on the grid, {item['text_sinks']} text sink(s)"
                 if item["sinks_known"] else "")
        lines.append(f"  layer {item['layer']}: image mass {item['before_mass']:.4f} -> {item['after_mass']:.4f}"
                     f"{sinks}")
    return "\n".join(lines)



def cmd_inspect(args: argparse.Namespace) -> int:
    from ..generation import load_rgb
    from ..loading import load_model, sample_image_path
    from ..viz import render_rows

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise SystemExit(f"error: --out {out} must end in .png, .jpg or .webp")
    args.method_spec = parse_method_args(args)  # every method setting checked before the model is loaded
    args.method = args.method_spec.names[0]
    if args.method not in PANEL_BUILDERS:  # the contrastive decoders (vcd, icd, m3id) change logits, not attention
        raise UserError(f"--method {args.method} changes the next-token logits, not attention, so there is nothing "
                        f"to picture: choose one of {', '.join(sorted(PANEL_BUILDERS))}, or run vlm-attn generate "
                        f"--method {args.method}")
    parse_layers(args.layers)
    check_model_args(args)
    check_images([args.image] if args.image else [])
    check_method_files(args.method_spec.configs)
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    image = load_rgb(args.image or sample_image_path())
    # Built once: the figure and the --answer generation use the same configs (and log their warnings once).
    args.attention_configs = build_configs(args.method_spec, model)
    check_against_model([*args.attention_configs, args.method_spec.input_config], model, processor)
    rows, summary = PANEL_BUILDERS[args.method](model, processor, image, args)
    figure = render_rows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)
    if args.answer:
        from ..generation import generate

        attention = args.method in ATTENTION_METHODS
        methods = args.attention_configs if attention else [args.method_spec.input_config]
        result = generate(model, processor, image, args.prompt, methods=methods, vqa=args.vqa,
                          max_new_tokens=args.max_new_tokens)
        summary["answer"] = result.text
        if not args.json:
            write(f"answer ({args.method}): {result.text}" if attention else format_decision(result))
    if args.json:
        write(json.dumps(summary, indent=2))
    elif args.method in ATTENTION_METHODS:
        write(format_layers(summary))
    else:
        write(", ".join(f"{k}: {v}" for k, v in summary.items()))
    write(f"wrote {out} ({figure.width}x{figure.height})")
    return 0


def register(sub: Any) -> None:
    ins = sub.add_parser(
        "inspect",
        help="draw where the model looks (attention heatmap) and what the method changes or decides",
        description="Writes a figure of the attention of the last prompt row (the row that predicts the answer's\n"
                    "first token) to the image tokens, mean over heads, drawn as a heatmap over the image.\n\n"
                    "Attention methods (var, pai, paint): one row per layer (--layers) with three panels,\n"
                    "  before = the unsteered model, after = the steered model after the method's edits there,\n"
                    "  change = after minus before (blue: attention taken away, red: added; its own scale).\n"
                    "  Before and after share one colour scale; titles give the row's attention mass on the\n"
                    "  image; VAR's visual sink tokens at that layer are outlined and crossed in red.\n"
                    "Input-level methods (funnel, vicrop): the anchoring map(s) at the anchor layer with the\n"
                    "  boxes the method chose, named in a legend.\n"
                    "Each heatmap has a colour bar and covers the part of the image the model saw (the\n"
                    "  processor's crop, e.g. LLaVA's centre square); the rest of the image is greyed.",
        epilog="examples:\n"
               "  vlm-attn inspect --model llava-hf/llava-1.5-7b-hf --image street.jpg --prompt 'Is there a dog?' "
               "--method var --layers 2,14,30 --out look.png --answer\n"
               "  vlm-attn inspect --model tiny-llava --method funnel --crops --out funnel.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(ins)
    ins.add_argument("--image", default=None, help="image file (default: the bundled sample picture)")
    ins.add_argument("--prompt", default="What is in the image?", help="the question")
    ins.add_argument("--out", required=True, help="figure to write (.png, .jpg or .webp)")
    ins.add_argument("--layers", default=None,
                     help="attention methods: decoder layers to draw, 0-based and comma-separated, e.g. 2,14 "
                          "(default: up to 4 spread over 2..L-1)")
    add_method_args(ins, single=True, default="funnel")
    ins.add_argument("--crops", action="store_true", help="funnel: add the three crops beside the heatmap")
    ins.add_argument("--answer", action="store_true", help="also generate the method's (steered) answer and print it")
    ins.add_argument("--max-new-tokens", type=int, default=32)
    ins.add_argument("--json", action="store_true", help="print the decision as JSON")
    ins.set_defaults(func=cmd_inspect)
