"""Measuring each attention head's visual sensitivity for PAINT's head-specific modulation (SPEC §4, ours).

s[l, h] = mean, over a calibration set of (image, prompt) pairs, of the image attention mass of head (l, h)'s text
query rows after the image (one prefill forward per pair, no generation). The forward runs through the engine
with a probe method that reads the post-softmax rows and changes nothing, so the model's own attention stays on
SDPA for every other row. The result is a `HeadSensitivity` (saved as JSON with the model name, a config hash and
this recipe) that `PAINTConfig(head_sensitivity=...)` takes.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..engine import capturing, engine_of
from ..engine.method import AttentionMethod, LayerView, RowSet
from ..patches.base import get_adapter
from ..methods.heads import HeadSensitivity, SensitivityAccumulator

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS: tuple[str, ...] = (
    "Please describe this image in detail.",
    "What objects are in this image?",
    "Is there a person in the image? Answer yes or no.",
    "What is the main color of the scene?",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class _SensitivityProbe(AttentionMethod):
    """Reads the text rows after the image in every layer and accumulates their image mass; edits nothing."""

    name = "head_probe"

    def __init__(self, accumulator: SensitivityAccumulator):
        self.acc = accumulator

    def rows(self, view: LayerView) -> torch.Tensor | None:
        return view.text_rows_after_image() if view.prefill else None

    def edit_probs(self, view: LayerView, rows: RowSet, probs: torch.Tensor) -> None:
        self.acc.add(view.layer_idx, probs, view.image_keys, rows.own)
        return None


def list_images(images: str | os.PathLike | Sequence[Any] | None) -> list[Any]:
    """Calibration images: a folder (its image files, sorted), a list of paths/PIL images, or None (the sample)."""
    from ..resources import sample_image_path

    if images is None:
        return [sample_image_path()]
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"calibration image folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        return files
    items = list(images)
    if not items:
        raise ValueError("no calibration images given")
    return items


def calibrate_heads(
    model: nn.Module,
    processor: Any,
    images: str | os.PathLike | Sequence[Any] | None = None,
    n: int = 32,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    progress: bool = True,
) -> HeadSensitivity:
    """Measure s[l, h] on `n` (image, prompt) pairs; images and prompts are cycled in order.

    Args:
        model, processor: the VLM (not patched by `vlm_attn.apply`) and its processor.
        images: a folder, a list of paths / PIL images, or None for the bundled sample picture.
        n: number of calibration pairs (>= 1). With fewer images than n, images repeat with the next prompt.
        prompts: the user prompts, cycled.
        progress: show a tqdm progress bar.

    Returns the `HeadSensitivity` of this model (save it with `.save(path)`).
    """
    from ..prompting import build_inputs, load_image

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not prompts:
        raise ValueError("prompts must not be empty")
    if engine_of(model) is not None:
        raise RuntimeError("calibrate the unpatched model: remove the vlm-attn handle first")
    pictures = list_images(images)
    adapter = get_adapter(model)
    text = adapter.text_config()
    acc = SensitivityAccumulator(int(text.num_hidden_layers), int(text.num_attention_heads))
    names: list[str] = []
    with capturing(model, _SensitivityProbe(acc), adapter):
        device = next(model.parameters()).device
        for i in tqdm(range(n), desc="calibrating heads", disable=not progress):
            picture, prompt = pictures[i % len(pictures)], prompts[i % len(prompts)]
            names.append(os.path.basename(os.fspath(picture)) if isinstance(picture, (str, os.PathLike)) else f"<image {i}>")
            batch = build_inputs(processor, [load_image(picture)], [prompt]).to(device)
            with torch.no_grad():
                model(**batch)
    recipe = {
        "statistic": "mean image attention mass of text query rows after the first image token (prefill)",
        "n": n,
        "images": names,
        "prompts": list(prompts),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    return acc.to_sensitivity(model_name, model.config, recipe)
