"""Loading a model and its processor: a hub id, a local directory, or a built-in tiny demo model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .patches.processors import load_processor, missing_package_message, one_line
from .resources import DEMO_FILE, sample_image_path, toy_model_path
from .testing.tiny import TINY_PREFIX, load_tiny

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_FILE", "TOY_MODEL", "demo_settings", "load_model", "load_processor", "missing_package_message",
    "sample_image_path", "toy_model_path",
]

TOY_MODEL = "toy-vlm"


def _dtype(name: str | None) -> Any:
    if name in (None, "auto"):
        return "auto"
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, float16 or bfloat16") from None


HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")


def load_model(name: str, device: str | None = None, dtype: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """(model, processor) for a hub id, a local directory, `toy-vlm` (the shipped toy model) or `tiny-<family>`
    (random weights, built offline).

    The config and the processor load first, so that a bad name or a missing package fails before the weights
    load; `kwargs` go to the model's `from_pretrained` (hub settings such as `revision` to all three).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    if name == TOY_MODEL:
        name = str(toy_model_path())
    if name.startswith(TINY_PREFIX):
        model, processor = load_tiny(name)
    else:
        hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        model_dtype = _dtype(dtype)
        try:
            config = AutoConfig.from_pretrained(name, **hub)
            processor = load_processor(name, config, **hub)
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=model_dtype, **kwargs)
        except ImportError as exc:
            raise RuntimeError(f"could not load {name!r}: {one_line(exc)}") from exc
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"could not load {name!r}: {one_line(exc)} Pass a hub id you can reach or a local directory saved "
                "with save_pretrained; without network, try the built-in demo model: --model tiny-llava."
            ) from exc
    if device:
        model = model.to(device)
    return model.eval(), processor


def demo_settings(model: Any) -> dict[str, Any] | None:
    """VAR settings stored beside a tiny demo model (its random weights have no massive activations)."""
    path = Path(getattr(model.config, "_name_or_path", "") or "") / DEMO_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return None
