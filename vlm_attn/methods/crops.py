"""Shared, model-free helpers for the input-level methods (Visual Funnel, ViCrop).

Conventions used throughout:

* An attention *grid* is a 2-D map of shape ``(gh, gw)``: row ``i`` is the image-token row from the top,
  column ``j`` the column from the left, exactly as the image tokens are laid out by the vision encoder.
* Image sizes are ``(W, H)`` in pixels, as PIL reports them.
* The grid is laid over the *seen region* ``(l, t, r, b)``: the rectangle of the original image, in original
  pixels, that the processor turned into the grid's picture (`FamilyAdapter.seen_region`; the whole image when
  none is given). Cell ``(i, j)`` covers ``[l + j * cw, l + (j+1) * cw) x [t + i * ch, t + (i+1) * ch)`` with
  ``cw = (r - l) / gw`` and ``ch = (b - t) / gh``, so its centre is ``(l + (j + 0.5) * cw, t + (i + 0.5) * ch)``.
  LLaVA's centre crop makes the region narrower than the image; padding makes it reach past the image.
* A :data:`Box` is ``(left, top, right, bottom)`` in integer pixels with ``right``/``bottom`` exclusive, the form
  ``PIL.Image.crop`` takes; every box built here lies inside ``[0, W] x [0, H]``.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from PIL import Image

Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in integer pixels, right/bottom exclusive (PIL crop convention)."""

Region = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in original-image pixels (floats): where an attention grid lies on the image."""

MapLike = Union[torch.Tensor, np.ndarray]

VQA_SUFFIX = " Answer the question using a single word or phrase."
"""Short-answer instruction appended to VQA questions (LLaVA-1.5's VQA prompt; used by both methods)."""


def with_vqa_suffix(question: str, vqa: bool, suffix: str = VQA_SUFFIX) -> str:
    """Return ``question`` with the short-answer ``suffix`` appended when ``vqa`` is true.

    The question is stripped of surrounding whitespace so that the suffix's leading space is the only separator.
    """
    question = question.strip()
    return question + suffix if vqa else question


def check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """Validate an ``(W, H)`` pair of positive integers and return it as plain ints."""
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (width, height), got {image_size!r}")
    width, height = (int(v) for v in image_size)
    if width < 1 or height < 1 or width != image_size[0] or height != image_size[1]:
        raise ValueError(f"image_size must be two integers >= 1, got {image_size!r}")
    return width, height


def as_grid(grid_map: MapLike) -> torch.Tensor:
    """Convert a 2-D attention map (tensor or array) to a float64 CPU tensor, rejecting bad shapes or values.

    float64 keeps the hand-checked arithmetic (entropy, centroids, window sums) free of rounding surprises; the
    maps are small (hundreds to a few thousand cells), so the cost is nil.
    """
    grid = torch.as_tensor(grid_map).detach().to(device="cpu", dtype=torch.float64)
    if grid.dim() != 2 or grid.shape[0] < 1 or grid.shape[1] < 1:
        raise ValueError(f"attention map must be 2-D (gh, gw) with gh, gw >= 1, got shape {tuple(grid.shape)}")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("attention map holds NaN or infinite values")
    return grid


def check_region(region: Region | None, image_size: tuple[int, int]) -> Region:
    """The seen region as four floats; the whole image ``(0, 0, W, H)`` when ``region`` is None.

    A region must be finite with ``right > left`` and ``bottom > top``; it may reach past the image (padding).
    """
    width, height = check_image_size(image_size)
    if region is None:
        return 0.0, 0.0, float(width), float(height)
    if len(region) != 4:
        raise ValueError(f"region must be (left, top, right, bottom), got {region!r}")
    left, top, right, bottom = (float(v) for v in region)
    if not all(math.isfinite(v) for v in (left, top, right, bottom)) or right <= left or bottom <= top:
        raise ValueError(f"region must be a finite (left, top, right, bottom) with right > left, bottom > top, "
                         f"got {region!r}")
    return left, top, right, bottom


def cell_size(grid: tuple[int, int], image_size: tuple[int, int], region: Region | None = None) -> tuple[float, float]:
    """``(cell width, cell height)`` in original-image pixels of a ``(gh, gw)`` grid over ``region``."""
    left, top, right, bottom = check_region(region, image_size)
    return (right - left) / grid[1], (bottom - top) / grid[0]


def cell_centers(
    grid: tuple[int, int], image_size: tuple[int, int], region: Region | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of the cells of a ``(gh, gw)`` grid laid over ``region`` of an image of size ``(W, H)``.

    Returns ``(xs, ys)``: float64 tensors of shapes ``(gw,)`` and ``(gh,)`` with ``xs[j] = l + (j + 0.5) * cw``
    and ``ys[i] = t + (i + 0.5) * ch`` (see the module conventions; the whole image when ``region`` is None).
    """
    gh, gw = grid
    left, top, _, _ = check_region(region, image_size)
    cw, ch = cell_size(grid, image_size, region)
    xs = left + (torch.arange(gw, dtype=torch.float64) + 0.5) * cw
    ys = top + (torch.arange(gh, dtype=torch.float64) + 0.5) * ch
    return xs, ys


def cells_in_box(
    grid: tuple[int, int], image_size: tuple[int, int], box: Box, region: Region | None = None
) -> torch.Tensor:
    """Boolean ``(gh, gw)`` mask of the cells whose centre (over ``region``) lies inside ``box``.

    The test is closed on all four sides (``left <= x <= right``, ``top <= y <= bottom``): a centre lying exactly on
    an edge counts as inside, so a box never loses a cell to the exclusive-edge convention of PIL crops.
    """
    xs, ys = cell_centers(grid, image_size, region)
    left, top, right, bottom = box
    inside_x = (xs >= left) & (xs <= right)
    inside_y = (ys >= top) & (ys <= bottom)
    return inside_y[:, None] & inside_x[None, :]


def weighted_centroid(
    weights: torch.Tensor,
    image_size: tuple[int, int],
    mask: torch.Tensor | None = None,
    region: Region | None = None,
) -> tuple[float, float] | None:
    """Attention-weighted centroid of the cell centres (over ``region``), in original-image pixels.

    ``weights`` is a non-negative ``(gh, gw)`` map; ``mask`` (same shape, bool) restricts the sum to some cells.
    Returns ``(x, y)``, or ``None`` when the (restricted) weights hold no mass, so that callers choose their own
    fallback.
    """
    if mask is not None:
        weights = torch.where(mask, weights, torch.zeros_like(weights))
    total = float(weights.sum())
    if total <= 0.0:
        return None
    xs, ys = cell_centers((weights.shape[0], weights.shape[1]), image_size, region)
    x = float((weights.sum(dim=0) * xs).sum()) / total
    y = float((weights.sum(dim=1) * ys).sum()) / total
    return x, y


def _place(center: float, length: int, limit: int) -> int:
    """Start of a segment of ``length`` centred at ``center`` (rounded half up), shifted into ``[0, limit]``."""
    start = math.floor(center - length / 2.0 + 0.5)
    return min(max(start, 0), limit - length)


def fit_box(center: tuple[float, float], width: int, height: int, image_size: tuple[int, int]) -> Box:
    """An integer ``width x height`` box centred as close to ``center`` as possible, shifted inside the image.

    The box is first centred on ``center`` (left/top rounded half up), then shifted, never shrunk, so that it lies
    in ``[0, W] x [0, H]``. Sizes larger than the image are an error here: callers decide how to cap them.
    """
    img_w, img_h = check_image_size(image_size)
    if not (1 <= width <= img_w and 1 <= height <= img_h):
        raise ValueError(f"box size {width}x{height} must be within 1..{img_w} x 1..{img_h}")
    left = _place(center[0], width, img_w)
    top = _place(center[1], height, img_h)
    return left, top, left + width, top + height


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB copy of ``image``; transparent pixels are composited over white.

    Compositing (rather than dropping alpha) matches what HuggingFace image processors do when they convert RGBA
    input, so a crop looks to the model like the same region of the full image.
    """
    if image.mode == "RGB":
        return image.copy()
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
