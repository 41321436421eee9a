"""ViCrop with relative attention ("MLLMs Know Where to Look", ICLR 2025): the model-free part.

A baseline beside the Visual Funnel (SPEC section 5). Facts from the authors' public code (the ``mllms_know``
repository: ``utils.bbox_from_att_image_adaptive``, ``llava_methods.rel_attention_llava``, ``run.py``), restated:

* Attention map: one forward pass per prompt, attention of the last prompt position to the image tokens at decoder
  layer 14 (0-based, ``outputs.attentions[14]``) for LLaVA-1.5-7B, mean over heads, reshaped to the 24x24 grid.
* Relative map: ``A(question) / A(general)``, the general question being "Write a general description of the
  image." (plain division in their code; we add ``eps`` to the denominator). In the LLaVA path both attention
  prompts carry the short-answer suffix.
* Crop size ``bbox_size`` is the model's input resolution (336 for LLaVA-1.5, 224 for InstructBLIP); ratios
  ``r`` in (1, 1.2, 1.4, 1.6, 1.8, 2).
* Window search per ratio: window of ``floor(bbox_size * r / cell)`` cells per axis (capped at the grid), sliding
  maximum sum; a ratio whose window covers the whole map is skipped (whole image if that happens at ``r = 1``).
  Sharpness = (max window sum - mean of the existing left/right/up/down neighbouring window sums) / window area in
  cells; the sharpest ratio wins. The crop is ``bbox_size * r`` pixels, centred at the winning window's centre,
  shifted inside the image and clipped per axis.
* Answer: one turn with two images, original then crop, and the question (with the suffix for VQA); greedy.
* Their V* runs compute attention with the first line of the question only; the high-resolution variant that tiles
  images above 1024 pixels is not part of this module.

Our small deviations, all documented on :func:`window_search`: integer rounding half up instead of truncation,
a window of at least one cell, and a floating-point tolerance in the cell count. The map's cells tile the part of
the image the processor showed the model (the seen region: LLaVA's HF processor centre-crops a non-square photo),
where the authors' code lays the grid over the whole image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from vlm_attn.methods.crops import (
    VQA_SUFFIX,
    Box,
    MapLike,
    Region,
    as_grid,
    check_image_size,
    check_region,
    fit_box,
    to_rgb,
    with_vqa_suffix,
)

from vlm_attn.methods.config import MethodConfig, Number, Numbers, Text, setting
from vlm_attn.methods.registry import register_input

logger = logging.getLogger(__name__)

GENERAL_PROMPT = "Write a general description of the image."
"""The question-agnostic prompt whose attention divides the question's (authors' wording)."""

DEFAULT_RATIOS: tuple[float, ...] = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
"""Crop-size multipliers tried by the window search (authors' values)."""

RELATIVE_EPS = 1e-12
"""Added to the general map before dividing, so a zero there cannot produce inf or NaN."""

_CELL_TOLERANCE = 1e-9  # keeps e.g. 2.9999999999 cells from flooring to 2


@register_input
@dataclass(frozen=True)
class ViCropConfig(MethodConfig):
    """Settings of the ViCrop rel-att baseline.

    Attributes:
        layer: 0-based decoder layer whose attention is read. ``None`` lets the engine pick the family default
            (14 for LLaVA-1.5-7B in the authors' code).
        bbox_size: base crop side in original-image pixels. ``None`` means the vision encoder's input size, resolved
            by the engine (the authors use 336 for LLaVA-1.5, 224 for InstructBLIP).
        ratios: crop-size multipliers tried by :func:`window_search`; each > 0.
        general_prompt: the question-agnostic prompt of the relative map.
        vqa_suffix: the short-answer instruction appended for VQA tasks.
        eps: added to the general map's denominator in :func:`relative_map`.
    """

    name: ClassVar[str] = "vicrop"
    description: ClassVar[str] = "ViCrop rel-att (input-level): answer on the image plus a crop where attention points"

    layer: int | None = setting(None, "decoder layer whose attention is read (default: per family)",
                                Number(low=0, integer=True, optional=True))
    bbox_size: int | None = setting(None, "base crop side in pixels (default: the encoder input size)",
                                    Number(low=1, integer=True, optional=True))
    ratios: tuple[float, ...] = setting(DEFAULT_RATIOS, "crop-size multipliers tried by the window search",
                                        Numbers())
    general_prompt: str = setting(GENERAL_PROMPT, "question-agnostic prompt of the relative map",
                                  Text(nonempty=True))
    vqa_suffix: str = setting(VQA_SUFFIX, "appended to the question for short-answer VQA", Text())
    eps: float = setting(RELATIVE_EPS, "added to the general map's denominator",
                         Number(0.0, 1.0, high_open=True))


def _check_ratios(ratios: tuple[float, ...]) -> None:
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError) as err:
        raise ValueError(f"ratios must be a non-empty sequence of numbers > 0, got {ratios!r}") from err
    if not values or any(not math.isfinite(r) or r <= 0.0 for r in values):
        raise ValueError(f"ratios must be a non-empty sequence of numbers > 0, got {ratios!r}")


def relative_map(question_map: MapLike, general_map: MapLike, eps: float = RELATIVE_EPS) -> torch.Tensor:
    """Relative attention ``A(question) / (A(general) + eps)``, element-wise.

    Both maps are head-averaged ``(gh, gw)`` attention grids of the same image, from the question prompt and the
    general prompt; negative entries are clipped to 0. Dividing by the general map cancels the regions the model
    looks at whatever it is asked (sinks, salient objects), leaving what the question adds. Returns float32
    ``(gh, gw)``.
    """
    question = as_grid(question_map).clamp_min(0.0)
    general = as_grid(general_map).clamp_min(0.0)
    if question.shape != general.shape:
        raise ValueError(f"maps differ in shape: {tuple(question.shape)} vs {tuple(general.shape)}")
    if eps < 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    ratio = question / (general + eps)
    # 0/0 (eps = 0 and both zero) carries no evidence for the cell.
    return torch.nan_to_num(ratio, nan=0.0).to(torch.float32)


def _window_cells(side: float, cell: float, cells: int) -> int:
    """Cells a window of ``side`` pixels spans on an axis of ``cells`` cells of ``cell`` pixels: in ``[1, cells]``."""
    return min(max(math.floor(side / cell + _CELL_TOLERANCE), 1), cells)


def _sharpness(sums: np.ndarray, y: int, x: int, area: int) -> float:
    """(peak - mean of the existing 4-neighbour window sums) / area."""
    ny, nx = sums.shape
    candidates = ((y, x - 1), (y, x + 1), (y - 1, x), (y + 1, x))
    neighbours = [sums[yy, xx] for yy, xx in candidates if 0 <= yy < ny and 0 <= xx < nx]
    return float(sums[y, x] - np.mean(neighbours)) / area


def window_search(
    att_map: MapLike,
    image_size: tuple[int, int],
    bbox_size: int,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    region: Region | None = None,
) -> Box:
    """The ViCrop crop box: sliding maximum-sum window, ratio chosen by sharpness.

    Args:
        att_map: ``(gh, gw)`` non-negative map, normally :func:`relative_map`'s output.
        image_size: ``(W, H)`` of the original image.
        bbox_size: base crop side in pixels (the encoder input size).
        ratios: crop-size multipliers ``r``.
        region: ``(left, top, right, bottom)`` of the image, in original pixels, that the map's grid covers (what
            the processor showed the model, `FamilyAdapter.seen_region`); None: the whole image.

    Units: the map's cells tile ``region``, a cell being ``(r - l)/gw x (b - t)/gh`` original pixels. For each ``r``
    the window spans ``floor(bbox_size * r / cell)`` cells per axis (at least 1, at most the grid; a ``1e-9``
    tolerance absorbs floating-point error). A ratio whose window covers the whole map on both axes is skipped; when
    every ratio is skipped the whole image is returned. Ties: the first maximum scanning columns then rows (smallest
    ``x``, then smallest ``y``, as the authors' loop does), and the first ratio in ``ratios``.

    Returns:
        ``(left, top, right, bottom)``: a box of ``round(bbox_size * r)`` pixels per axis (rounded half up, clipped
        to ``W`` and ``H`` separately, as the authors do), centred at the winning window's centre in original
        pixels (inside ``region``) and shifted inside the image.
    """
    grid = as_grid(att_map).numpy()
    width, height = check_image_size(image_size)
    if isinstance(bbox_size, bool) or not isinstance(bbox_size, int) or bbox_size < 1:
        raise ValueError(f"bbox_size must be an int >= 1 (pixels), got {bbox_size!r}")
    _check_ratios(ratios)
    left, top, right, bottom = check_region(region, (width, height))
    gh, gw = grid.shape
    cell_w, cell_h = (right - left) / gw, (bottom - top) / gh

    best: tuple[float, float, int, int, int, int] | None = None  # (sharpness, ratio, x, y, kx, ky)
    for ratio in (float(r) for r in ratios):
        kx = _window_cells(bbox_size * ratio, cell_w, gw)
        ky = _window_cells(bbox_size * ratio, cell_h, gh)
        if kx == gw and ky == gh:
            continue
        sums = sliding_window_view(grid, (ky, kx)).sum(axis=(-2, -1))  # (gh-ky+1, gw-kx+1)
        # Column-major argmax: the first maximum with the smallest x, then the smallest y.
        flat = int(np.argmax(sums.T))
        x, y = divmod(flat, sums.shape[0])
        sharp = _sharpness(sums, y, x, kx * ky)
        logger.debug("ratio %.2f: window %dx%d cells at (x=%d, y=%d), sharpness %.6g", ratio, kx, ky, x, y, sharp)
        if best is None or sharp > best[0]:
            best = (sharp, ratio, x, y, kx, ky)

    if best is None:
        logger.debug("every window covers the whole %dx%d map; cropping the whole image", gh, gw)
        return 0, 0, width, height
    _, ratio, x, y, kx, ky = best
    center = (left + (x + kx / 2.0) * cell_w, top + (y + ky / 2.0) * cell_h)
    side = max(math.floor(bbox_size * ratio + 0.5), 1)
    return fit_box(center, min(side, width), min(side, height), (width, height))


def build_attention_prompts(question: str, vqa: bool, config: ViCropConfig | None = None) -> tuple[str, str]:
    """The two texts whose attention maps are divided: ``(question prompt, general prompt)``.

    As in the authors' LLaVA path, both carry the short-answer suffix when ``vqa`` is true; the question prompt is
    also the answer-turn text.
    """
    config = config or ViCropConfig()
    return (
        with_vqa_suffix(question, vqa, config.vqa_suffix),
        with_vqa_suffix(config.general_prompt, vqa, config.vqa_suffix),
    )


def vicrop_images(image: Image.Image, box: Box) -> list[Image.Image]:
    """The answer-turn images ``[original, crop]``, both RGB (alpha composited over white)."""
    width, height = image.size
    left, top, right, bottom = box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"box {box} is not a non-empty box inside the {width}x{height} image")
    rgb = to_rgb(image)
    return [rgb, rgb.crop(box)]
