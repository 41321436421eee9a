"""Helpers shared by the command modules: output, model flags, method configs from flags."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("vlm_attn.cli")


def write(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def parse_dims(value: str) -> tuple[int, ...] | str:
    """'1415,2533' -> (1415, 2533); anything else is a path to a calibration JSON."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return value


def build_configs(args: argparse.Namespace, model: Any) -> list[Any]:
    """Method configs from --method, --method-config and the per-method flags."""
    from ..loading import demo_settings
    from ..methods.registry import config_classes

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
                    "demo model: using the sink dims %s and tau %s shipped beside it (%s)",
                    demo["sink_dims"], demo["tau"], demo.get("note", "small models have no massive activations"),
                )
                kwargs.setdefault("sink_dims", tuple(demo["sink_dims"]))
                kwargs.setdefault("tau", demo["tau"])
            for flag in ("p", "rho", "tau"):
                if getattr(args, flag) is not None:
                    kwargs[flag] = getattr(args, flag)
            if args.sink_dims is not None:
                kwargs["sink_dims"] = parse_dims(args.sink_dims)
        try:
            configs.append(classes[name](**kwargs))
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"error: bad settings for {name}: {exc}") from None
    return configs


def generate_text(model: Any, processor: Any, batch: Any, max_new_tokens: int) -> str:
    """Greedy answer to one prompt through `vlm_attn.steered_generate` (with what the applied methods need)."""
    import torch

    from ..api import steered_generate

    with torch.no_grad():
        out = steered_generate(model, **batch, max_new_tokens=max_new_tokens, do_sample=False)
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy-vlm",
                   help="hub id, local directory saved with save_pretrained, toy-vlm (default: the small model "
                        "trained on synthetic scenes that ships with the package) or tiny-<family> (random "
                        "weights built offline: a demo of the machinery, not of quality)")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: where from_pretrained puts it)")
    p.add_argument("--dtype", default=None, help="auto, float32, float16 or bfloat16 (default: auto)")
