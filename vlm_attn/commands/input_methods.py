"""What the input-level methods (Visual Funnel, ViCrop) print, shared by `generate` and `inspect`.

Their flags and configs come from the registry like every method's (`commands/common.py: add_method_args`,
`parse_method_args`); input-level methods are not applied to the model but decide which images the answer turn
carries, so `MethodSpec.input_config` holds them apart from the attention configs.
"""

from __future__ import annotations

from typing import Any

INPUT_METHODS = ("funnel", "vicrop")


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
