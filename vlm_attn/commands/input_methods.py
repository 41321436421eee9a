"""Flags and configs of the input-level methods (Visual Funnel, ViCrop), shared by `generate` and `inspect`.

Input-level methods are not attention-method configs (they are not applied to the model but decide which images
the answer turn carries), so they are split off `--method` before the attention configs are built.
"""

from __future__ import annotations

import argparse
from typing import Any

INPUT_METHODS = ("funnel", "vicrop")


def add_input_method_args(p: argparse.ArgumentParser, vqa: bool = True) -> None:
    """--anchor-layer, --focal-side, --funnel-fallback, and --vqa unless the caller fixes the prompt itself."""
    if vqa:
        p.add_argument("--vqa", action="store_true",
                       help="short-answer VQA: append 'Answer the question using a single word or phrase.'")
    p.add_argument("--anchor-layer", type=int, default=None,
                   help="funnel/vicrop: decoder layer whose last-row attention is read (default: per family, "
                        "14 for LLaVA-1.5-7B, 22 for Qwen2.5-VL-3B, ~60%% depth otherwise)")
    p.add_argument("--focal-side", type=int, default=None,
                   help="funnel: focal box side / vicrop: base crop side, in pixels (default: encoder input size, "
                        "224 for Qwen-VL)")
    p.add_argument("--funnel-fallback", choices=("error", "crops_only", "vicrop"), default=None,
                   help="funnel on a model that cannot take 4 images in one turn: send the 3 crops, or the "
                        "original + focal crop (default: error)")


def split_methods(names: list[str] | None) -> tuple[str | None, list[str]]:
    """(the input-level method named in --method or None, the other names); at most one input-level method."""
    names = list(names or [])
    chosen = [n for n in names if n in INPUT_METHODS]
    if len(chosen) > 1:
        raise SystemExit(f"error: at most one input-level method (funnel or vicrop), got {', '.join(chosen)}")
    return (chosen[0] if chosen else None), [n for n in names if n not in INPUT_METHODS]


def build_input_config(name: str, args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Any:
    """FunnelConfig / ViCropConfig from the --method-config entry for `name` and the flags (flags win)."""
    from ..methods.funnel import FunnelConfig
    from ..methods.vicrop import ViCropConfig

    kwargs = dict((overrides or {}).get(name, {}))
    layer = getattr(args, "anchor_layer", None)
    side = getattr(args, "focal_side", None)
    try:
        if name == "funnel":
            if layer is not None:
                kwargs["anchor_layer"] = layer
            if side is not None:
                kwargs["focal_side"] = side
            if getattr(args, "funnel_fallback", None) is not None:
                kwargs["fallback"] = args.funnel_fallback
            return FunnelConfig(**kwargs)
        if name == "vicrop":
            if layer is not None:
                kwargs["layer"] = layer
            if side is not None:
                kwargs["bbox_size"] = side
            if "ratios" in kwargs:
                kwargs["ratios"] = tuple(kwargs["ratios"])
            return ViCropConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: bad settings for {name}: {exc}") from None
    raise SystemExit(f"error: unknown input-level method {name!r}; choose from: {', '.join(INPUT_METHODS)}")


def format_decision(result: Any) -> str:
    """A few lines on what Funnel / ViCrop decided: layer, grid, entropy and scales, boxes, images sent."""
    data = result.to_dict()
    lines = [f"layer {data.get('layer')}, grid {data.get('grid')}, "
             f"{'steered' if data.get('steered') else 'unsteered'} anchoring"]
    if "entropy" in data:
        lines.append(f"entropy {data['entropy']:.3f}, alpha1 {data['alpha1']:.2f}, alpha2 {data['alpha2']:.2f}, "
                     f"focal side {data['focal_side']}")
    if "bbox_size" in data:
        lines.append(f"bbox size {data['bbox_size']}")
    lines.append("boxes (left, top, right, bottom): " + ", ".join(str(tuple(b)) for b in data.get("boxes", [])))
    lines.append(f"images sent: {', '.join(data['images'])} ({data['image_tokens']} image tokens)")
    return "\n".join(lines)
