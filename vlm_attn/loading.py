"""Loading a model and its processor: a hub id, a local directory, or a built-in tiny demo model."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
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


def _is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def _cached(name: str, revision: str | None = None, cache_dir: Any = None) -> bool:
    """Whether the hub id's config is in the local Hugging Face cache (so that an offline load can work)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision, cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - a malformed id is not in the cache; from_pretrained names the problem
        return False
    return isinstance(found, str)


def hub_is_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One short connection to the hub's endpoint (no retries): False when the network is down or blocked."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def check_reachable(name: str, revision: str | None = None, cache_dir: Any = None, **_: Any) -> None:
    """Fail fast, in one line, when `name` is a hub id that is neither local, nor cached, nor reachable.

    Without this, an unreachable hub makes transformers retry for ~20 s and print each warning twice.
    """
    if _is_local(name):
        return
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise UserError(
            f"model directory {name} does not exist; pass a directory saved with save_pretrained or a hub id "
            "(offline: the shipped --model toy-vlm, or --model tiny-llava built on the spot)"
        )
    if _cached(name, revision, cache_dir):
        return
    if "/" not in name and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        return  # not an id at all: from_pretrained names the problem
    offline = hub_is_offline()
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached"
        raise UserError(
            f"{name!r} is neither a local directory nor in the local Hugging Face cache, and {why}; pass a local "
            "directory saved with save_pretrained, download the model where there is network, or try the shipped "
            "--model toy-vlm (or --model tiny-llava, built offline)"
        )


def check_model_type(model_type: str | None, name: str) -> None:
    """Refuse a checkpoint whose config.model_type is no supported family, before its weights load:
    `UnsupportedModelError` naming the supported families (a GPT-2 folder would otherwise get transformers' list
    of every image-text-to-text config class)."""
    from .patches.base import KNOWN_UNSUPPORTED, UnsupportedModelError, supported_families

    families = supported_families()
    if model_type in families:
        return
    why = f": {KNOWN_UNSUPPORTED[model_type]}" if model_type in KNOWN_UNSUPPORTED else ""
    raise UnsupportedModelError(f"{name!r} is a {model_type!r} model, which vlm-attn does not support{why}; use a "
                                f"vision-language model of a supported family: {', '.join(families)}")


def load_model(name: str, device: str | None = None, dtype: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """(model, processor) for a hub id, a local directory, `toy-vlm` (the shipped toy model) or `tiny-<family>`
    (random weights, built offline).

    The config and the processor load first, so that a bad name or a missing package fails before the weights
    load; `kwargs` go to the model's `from_pretrained` (hub settings such as `revision` to all three).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .patches.base import UnsupportedModelError

    if name == TOY_MODEL:
        name = str(toy_model_path())
    if name.startswith(TINY_PREFIX):
        model, processor = load_tiny(name)
    else:
        hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        check_reachable(name, **hub)
        model_dtype = _dtype(dtype)
        try:
            config = AutoConfig.from_pretrained(name, **hub)
            processor = load_processor(name, config, **hub)  # a missing package is named first (torchvision)
            check_model_type(getattr(config, "model_type", None), name)  # before the weights
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=model_dtype, **kwargs)
        except UnsupportedModelError:
            raise
        except ImportError as exc:
            raise UserError(f"could not load {name!r}: {one_line(exc)}") from exc
        except (OSError, ValueError) as exc:
            raise UserError(
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
