"""Loading a model and its processor: a hub id, a local directory, or a built-in tiny demo model."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .tiny import TINY_PREFIX, load_tiny

logger = logging.getLogger(__name__)

DEMO_FILE = "vlm_attn_demo.json"


TOY_MODEL = "toy-vlm"


def toy_model_path() -> Path:
    """The small LLaVA-architecture model trained on the toy COCO set that ships inside the package.

    It really looks at the image and really hallucinates the objects its training set paired (fork/knife,
    car/traffic light, dog/frisbee, apple/banana); `scripts/train_toy_vlm.py` rebuilds it.
    """
    return Path(str(resources.files("vlm_attn") / "assets" / "toy_vlm"))


def sample_image_path() -> Path:
    """The bundled sample picture (a synthetic street scene: car, tree, traffic light), for no-download demos."""
    return Path(str(resources.files("vlm_attn") / "assets" / "sample.png"))


def _dtype(name: str | None) -> Any:
    if name in (None, "auto"):
        return "auto"
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, float16 or bfloat16") from None


def load_model(name: str, device: str | None = None, dtype: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """(model, processor) for a hub id, a local directory, `toy-vlm` (the shipped toy model) or `tiny-<family>`
    (random weights, built offline)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if name == TOY_MODEL:
        name = str(toy_model_path())
    if name.startswith(TINY_PREFIX):
        model, processor = load_tiny(name)
    else:
        try:
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=_dtype(dtype), **kwargs)
            processor = AutoProcessor.from_pretrained(name)
        except (OSError, ValueError, ImportError) as exc:
            raise RuntimeError(
                f"could not load {name!r}: {exc}\nPass a hub id you can reach or a local directory saved with "
                "save_pretrained; without network, try the built-in demo model: --model tiny-llava."
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
