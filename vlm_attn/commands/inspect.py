"""`vlm-attn inspect`: a picture of where the model looks, with what the method decided drawn over it.

Each method that can be pictured has a panel builder in `PANEL_BUILDERS` (name -> function returning the panels
and a text summary); the figure is the builder's panels side by side (`vlm_attn.viz.render_panels`). The Funnel
draws its anchoring heatmap with the focal / alpha1 / alpha2 boxes (white, cyan, green), ViCrop its question,
general and relative maps with the crop box.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from .common import add_model_args, write
from .input_methods import INPUT_METHODS, add_input_method_args, build_input_config, format_decision

PanelBuilder = Callable[[Any, Any, Image.Image, argparse.Namespace], tuple[list[Any], dict[str, Any]]]


def funnel_panels(model: Any, processor: Any, image: Image.Image, args: argparse.Namespace) -> tuple[list, dict]:
    """The anchoring heatmap with the portfolio boxes; with --crops, the three crops beside it."""
    from ..generation import funnel_decide
    from ..methods.funnel import crop_portfolio
    from ..viz import Panel

    decision = funnel_decide(model, processor, image, args.prompt, build_input_config("funnel", args))
    p = decision.portfolio
    panels = [Panel(image, decision.attention, boxes=p.boxes,
                    title=f"funnel L{decision.anchor.layer} H={p.entropy:.2f}")]
    if args.crops:
        names = ("focal", f"alpha1 x{p.alpha1:.2f}", f"alpha2 x{p.alpha2:.2f}")
        panels += [Panel(c, title=n) for c, n in zip(crop_portfolio(image, p)[1:], names)]
    summary = {"method": "funnel", "layer": decision.anchor.layer, "grid": list(decision.anchor.grid.shape),
               "entropy": p.entropy, "alpha1": p.alpha1, "alpha2": p.alpha2, "focal_side": p.focal_side,
               "boxes": [list(b) for b in p.boxes], "steered": decision.anchor.steered}
    return panels, summary


def vicrop_panels(model: Any, processor: Any, image: Image.Image, args: argparse.Namespace) -> tuple[list, dict]:
    """ViCrop's question map, general map and relative map, the crop box on each."""
    from ..generation import vicrop_decide
    from ..viz import Panel

    decision = vicrop_decide(model, processor, image, args.prompt, build_input_config("vicrop", args), args.vqa)
    layer = decision.question.layer
    panels = [Panel(image, decision.question.attention, boxes=[decision.box], title=f"question L{layer}"),
              Panel(image, decision.general.attention, boxes=[decision.box], title="general"),
              Panel(image, decision.relative, boxes=[decision.box], title="relative")]
    summary = {"method": "vicrop", "layer": layer, "grid": list(decision.question.grid.shape),
               "bbox_size": decision.bbox_size, "boxes": [list(decision.box)], "steered": decision.question.steered}
    return panels, summary


PANEL_BUILDERS: dict[str, PanelBuilder] = {"funnel": funnel_panels, "vicrop": vicrop_panels}


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..generation import load_rgb
    from ..loading import load_model, sample_image_path
    from ..viz import render_panels

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise SystemExit(f"error: --out {out} must end in .png, .jpg or .webp")
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    image = load_rgb(args.image or sample_image_path())
    panels, summary = PANEL_BUILDERS[args.method](model, processor, image, args)
    figure = render_panels(panels)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)
    if args.answer:
        from ..generation import generate

        result = generate(model, processor, image, args.prompt, methods=[build_input_config(args.method, args)],
                          vqa=args.vqa, max_new_tokens=args.max_new_tokens)
        summary["answer"] = result.text
        if not args.json:
            write(format_decision(result))
    if args.json:
        write(json.dumps(summary, indent=2))
    else:
        write(", ".join(f"{k}: {v}" for k, v in summary.items()))
    write(f"wrote {out} ({figure.width}x{figure.height})")
    return 0


def register(sub: Any) -> None:
    ins = sub.add_parser(
        "inspect",
        help="draw where the model looks (attention heatmap) and what the method decided (boxes)",
        description="Runs the method's anchoring pass on one image and writes a figure: the attention map of the "
                    "last prompt row at the anchor layer over the image, with the method's boxes.",
    )
    add_model_args(ins)
    ins.add_argument("--image", default=None, help="image file (default: the bundled sample picture)")
    ins.add_argument("--prompt", default="What is in the image?", help="the question")
    ins.add_argument("--out", required=True, help="figure to write (.png, .jpg or .webp)")
    ins.add_argument("--method", choices=sorted(PANEL_BUILDERS), default="funnel",
                     help=f"what to picture (default funnel); input-level methods: {', '.join(INPUT_METHODS)}")
    add_input_method_args(ins)
    ins.add_argument("--crops", action="store_true", help="funnel: add the three crops beside the heatmap")
    ins.add_argument("--answer", action="store_true", help="also generate the method's answer and print it")
    ins.add_argument("--max-new-tokens", type=int, default=32)
    ins.add_argument("--json", action="store_true", help="print the decision as JSON")
    ins.set_defaults(func=cmd_inspect)
