"""Visual Funnel (arXiv 2512.10362, CVPR 2026 Findings): the model-free part.

The method runs at generate time, at the input level (SPEC section 5):

1. *Contextual anchoring*: one forward pass with :func:`build_anchor_prompt` and the image; the engine captures the
   attention of the last prompt position to the image tokens at one decoder layer, averages it over heads and hands
   the flat row to :func:`normalize_map`.
2. *Entropy-scaled portfolio*: :func:`funnel_portfolio` turns that map into three nested square boxes whose sizes
   grow with the map's normalised entropy (a diffuse map earns wider context).
3. *Answer*: one turn with the four images of :func:`crop_portfolio` (original, focal, alpha1, alpha2) and
   :func:`build_answer_prompt`, decoded greedily.

Everything here is pure: no model, no engine, no family knowledge. Shapes are documented per function; maps are
``(gh, gw)`` grids, sizes ``(W, H)`` and boxes ``(left, top, right, bottom)`` as in :mod:`vlm_attn.methods.crops`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from PIL import Image

from vlm_attn.methods.crops import (
    VQA_SUFFIX,
    Box,
    MapLike,
    Region,
    as_grid,
    cells_in_box,
    check_image_size,
    check_region,
    fit_box,
    to_rgb,
    weighted_centroid,
    with_vqa_suffix,
)

from vlm_attn.methods.config import Choice, ConfigError, Custom, MethodConfig, Number, Text, setting
from vlm_attn.methods.registry import register_input

logger = logging.getLogger(__name__)

ANCHOR_PROMPT = "To answer '{question}', where in the image should I look?"
"""Contextual-anchoring prompt; ``{question}`` is replaced by the user's question."""

ENTROPY_EPS = 1e-12
"""The epsilon inside ``log(A + eps)`` of the normalised entropy."""

ANCHOR_DEPTH = 0.6
"""Relative depth of the anchor layer for families without a published one (ours, SPEC section 5)."""

Fallback = Literal["error", "crops_only", "vicrop"]
FALLBACKS: tuple[str, ...] = ("error", "crops_only", "vicrop")


@register_input
@dataclass(frozen=True)
class FunnelConfig(MethodConfig):
    """Settings of the Visual Funnel.

    Attributes:
        anchor_layer: 0-based decoder layer (``module.layer_idx``) whose attention row anchors the portfolio.
            ``None`` lets the engine pick the family default (22 for Qwen2.5-VL-3B, 14 for LLaVA-1.5-7B, otherwise
            :func:`default_anchor_layer`). The upper bound is checked by the engine, which knows the depth.
        focal_side: side ``S`` of the focal box in original-image pixels. ``None`` means the vision encoder's input
            size, resolved by the engine (224 for Qwen2.5-VL, 336 for LLaVA-1.5).
        anchor_prompt: the contextual-anchoring template; must contain ``{question}`` and no other field.
        vqa_suffix: appended to the question in the answer turn when the task is short-answer VQA.
        entropy_eps: the epsilon inside ``log(A + eps)``.
        fallback: what to do when a model cannot take the four images of one turn: ``"error"`` raises;
            ``"crops_only"`` sends the three crops without the original; ``"vicrop"`` sends the original and the
            focal crop only (the ViCrop input shape). See :func:`fallback_images`.
    """

    name: ClassVar[str] = "funnel"
    description: ClassVar[str] = ("Visual Funnel (input-level): anchor on the question's attention, answer on three "
                                  "entropy-scaled crops")

    anchor_layer: int | None = setting(
        None, "decoder layer whose last-row attention anchors the crops (default: per family)",
        Number(low=0, integer=True, optional=True))
    focal_side: int | None = setting(None, "focal box side in pixels (default: the encoder input size)",
                                     Number(low=1, integer=True, optional=True))
    anchor_prompt: str = setting(ANCHOR_PROMPT, "contextual-anchoring template with {question}",
                                 Custom(lambda n, v: _check_template(v, n), "a template containing {question}"))
    vqa_suffix: str = setting(VQA_SUFFIX, "appended to the question for short-answer VQA", Text())
    entropy_eps: float = setting(ENTROPY_EPS, "epsilon inside log(A + eps) of the entropy",
                                 Number(0.0, 1.0, low_open=True, high_open=True))
    fallback: Fallback = setting(
        "error", "on a model that cannot take 4 images in one turn: error, crops_only (3 crops) or vicrop "
                 "(original + focal crop)", Choice(FALLBACKS))


def _check_template(template: str, name: str = "anchor_prompt") -> str:
    """Reject an anchor template that lacks ``{question}`` or names any other format field."""
    if not isinstance(template, str) or "{question}" not in template:
        raise ConfigError(f"{name} must be a str containing '{{question}}', got {template!r}")
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(
            f"{name} must contain '{{question}}' as its only format field, got {template!r}"
        ) from err
    return template


def default_anchor_layer(num_layers: int) -> int:
    """Anchor layer for a family without a published one: about 60% of the depth, rounded half up.

    ``num_layers`` is the decoder depth L; the result is a 0-based index in ``[0, L-1]``. For a 36-layer decoder
    (Qwen2.5-VL-3B) it gives 22, the published value.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    return min(max(math.floor(ANCHOR_DEPTH * num_layers + 0.5), 0), num_layers - 1)


def _to_distribution(grid: torch.Tensor) -> torch.Tensor:
    """Clip at 0 and normalise to sum 1; an all-zero map becomes uniform."""
    grid = grid.clamp_min(0.0)
    total = grid.sum()
    if float(total) <= 0.0:
        return torch.full_like(grid, 1.0 / grid.numel())
    return grid / total


def normalize_map(row: MapLike, grid: tuple[int, int]) -> torch.Tensor:
    """Turn one head-averaged attention row over the image tokens into a probability map on the token grid.

    Args:
        row: the attention of one query position to the ``gh * gw`` image tokens, already averaged over heads by
            the caller; any shape with ``gh * gw`` elements, flattened in row-major order (token order).
        grid: ``(gh, gw)``, the image-token grid.

    Returns:
        float32 tensor of shape ``(gh, gw)``: the row clipped at 0 and normalised to sum 1; uniform when nothing
        positive is left (e.g. an all-zero row), so that the portfolio degrades to centred boxes instead of failing.
    """
    gh, gw = grid
    if gh < 1 or gw < 1:
        raise ValueError(f"grid must be (gh, gw) with both >= 1, got {grid!r}")
    flat = torch.as_tensor(row).detach().reshape(-1)
    if flat.numel() != gh * gw:
        raise ValueError(f"row has {flat.numel()} elements, grid {gh}x{gw} needs {gh * gw}")
    return _to_distribution(as_grid(flat.reshape(gh, gw))).to(torch.float32)


def normalized_entropy(attention: MapLike, eps: float = ENTROPY_EPS) -> float:
    """Normalised Shannon entropy of a map: ``-sum A log(A + eps) / log(#cells)``, clipped to ``[0, 1]``.

    ``attention`` is any-shaped and non-negative; it is renormalised to sum 1 first (a no-op for the output of
    :func:`normalize_map`), and an all-zero map counts as uniform (entropy 1). One cell gives 0. 1 means the model
    looks everywhere, 0 means it looks at a single token.
    """
    grid = torch.as_tensor(attention).detach().to(device="cpu", dtype=torch.float64).reshape(1, -1)
    cells = grid.numel()
    if cells == 0:
        raise ValueError("attention map is empty")
    if cells == 1:
        return 0.0
    probs = _to_distribution(as_grid(grid))
    entropy = -float((probs * torch.log(probs + eps)).sum()) / math.log(cells)
    return min(max(entropy, 0.0), 1.0)


def portfolio_scales(entropy: float) -> tuple[float, float]:
    """Box scales relative to the focal side: ``alpha1 = 1.2 + 0.6 H``, ``alpha2 = 1.6 + 1.2 H``.

    ``H`` is clipped to ``[0, 1]``, so ``alpha1`` lies in ``[1.2, 1.8]`` and ``alpha2`` in ``[1.6, 2.8]``.
    """
    h = min(max(float(entropy), 0.0), 1.0)
    return 1.2 + 0.6 * h, 1.6 + 1.2 * h


@dataclass(frozen=True)
class Portfolio:
    """The entropy-scaled portfolio of one image.

    Attributes:
        attention: float64 ``(gh, gw)`` map the portfolio was built from (clipped, summing to 1).
        entropy: normalised entropy ``H`` of that map, in ``[0, 1]``.
        alpha1, alpha2: scales of the two context boxes relative to the focal side.
        centers: ``(mu0, mu1, mu2)``, each ``(x, y)`` in original-image pixels (floats).
        boxes: ``(focal, alpha1, alpha2)`` square boxes ``(left, top, right, bottom)``, integer pixels.
        image_size: ``(W, H)`` of the image the boxes refer to.
        focal_side: the requested focal side ``S`` (before any cap).
        region: ``(left, top, right, bottom)``, where the map's grid lies on the image in original pixels (the
            part of the image the model saw; see :mod:`vlm_attn.methods.crops`).
    """

    attention: torch.Tensor
    entropy: float
    alpha1: float
    alpha2: float
    centers: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    boxes: tuple[Box, Box, Box]
    image_size: tuple[int, int]
    focal_side: int
    region: Region

    @property
    def sides(self) -> tuple[int, int, int]:
        """Actual sides of the three boxes in pixels, after rounding and the cap at ``min(W, H)``."""
        return tuple(box[2] - box[0] for box in self.boxes)  # type: ignore[return-value]


def _box_side(scale: float, focal_side: int, image_size: tuple[int, int]) -> int:
    """``scale * S`` rounded half up, at least 1 pixel, capped at the image's shorter side."""
    side = max(math.floor(scale * focal_side + 0.5), 1)
    return min(side, min(image_size))


def _square_box(center: tuple[float, float], side: int, image_size: tuple[int, int]) -> Box:
    """A ``side x side`` box centred at ``center``, shifted inside the image."""
    return fit_box(center, side, side, image_size)


def _center_in(
    attention: torch.Tensor, image_size: tuple[int, int], box: Box, region: Region
) -> tuple[float, float]:
    """Centroid of the mass whose cell centres lie in ``box``; the box centre when that region holds no mass."""
    mask = cells_in_box((attention.shape[0], attention.shape[1]), image_size, box, region)
    center = weighted_centroid(attention, image_size, mask, region)
    if center is None:
        logger.debug("no attention mass inside box %s; using the box centre", box)
        return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    return center


def funnel_portfolio(
    attention: MapLike,
    image_size: tuple[int, int],
    focal_side: int,
    eps: float = ENTROPY_EPS,
    region: Region | None = None,
) -> Portfolio:
    """Build the entropy-scaled portfolio of three nested square boxes from an anchoring map.

    Args:
        attention: ``(gh, gw)`` non-negative map, normally the output of :func:`normalize_map` (it is clipped and
            renormalised again, a no-op there).
        image_size: ``(W, H)`` of the original image in pixels.
        focal_side: the focal side ``S`` in pixels (the encoder input size).
        eps: epsilon of the entropy.
        region: ``(left, top, right, bottom)`` of the image, in original pixels, that the map's grid covers
            (what the processor showed the model, `FamilyAdapter.seen_region`); None: the whole image.

    Cell centres lie in ``region`` (see :mod:`vlm_attn.methods.crops`). Centres: ``mu0`` is the weighted centroid
    of the cell centres over the whole map; ``mu1`` the centroid of the
    cells whose centre lies inside the focal box (closed edges); ``mu2`` the same inside the alpha1 box; a region
    without mass falls back to its box's centre. Boxes: sides ``S``, ``alpha1*S``, ``alpha2*S`` rounded half up
    and capped at ``min(W, H)`` so the box stays square and fits; each centred at its ``mu`` and then shifted (not
    shrunk) inside ``[0, W] x [0, H]``.
    """
    if isinstance(focal_side, bool) or not isinstance(focal_side, int) or focal_side < 1:
        raise ValueError(f"focal_side must be an int >= 1 (pixels), got {focal_side!r}")
    size = check_image_size(image_size)
    seen = check_region(region, size)
    grid = _to_distribution(as_grid(attention))
    entropy = normalized_entropy(grid, eps)
    alpha1, alpha2 = portfolio_scales(entropy)

    # A distribution always has mass; the image centre only satisfies the type checker.
    mu0 = weighted_centroid(grid, size, region=seen) or (size[0] / 2.0, size[1] / 2.0)
    focal_box = _square_box(mu0, _box_side(1.0, focal_side, size), size)
    mu1 = _center_in(grid, size, focal_box, seen)
    box1 = _square_box(mu1, _box_side(alpha1, focal_side, size), size)
    mu2 = _center_in(grid, size, box1, seen)
    box2 = _square_box(mu2, _box_side(alpha2, focal_side, size), size)

    if focal_side > min(size):
        logger.debug("focal side %d exceeds the image's shorter side %d; boxes capped", focal_side, min(size))
    return Portfolio(
        attention=grid,
        entropy=entropy,
        alpha1=alpha1,
        alpha2=alpha2,
        centers=(mu0, mu1, mu2),
        boxes=(focal_box, box1, box2),
        image_size=size,
        focal_side=focal_side,
        region=seen,
    )


def crop_portfolio(image: Image.Image, portfolio: Portfolio, resize: int | None = None) -> list[Image.Image]:
    """The four answer-turn images: ``[original, focal crop, alpha1 crop, alpha2 crop]``, all RGB.

    ``image`` must have the size the portfolio was built for. Grey, palette and RGBA images are converted to RGB
    (alpha composited over white). ``resize``, when given, resizes each crop (not the original) to
    ``resize x resize`` with bicubic filtering, for processors that would otherwise feed a small crop at low
    resolution; by default crops keep their pixel size and the processor resizes them.
    """
    if tuple(image.size) != tuple(portfolio.image_size):
        raise ValueError(f"image size {image.size} differs from the portfolio's {portfolio.image_size}")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < 1):
        raise ValueError(f"resize must be None or an int >= 1, got {resize!r}")
    rgb = to_rgb(image)
    crops = [rgb.crop(box) for box in portfolio.boxes]
    if resize is not None:
        crops = [crop.resize((resize, resize), Image.Resampling.BICUBIC) for crop in crops]
    return [rgb, *crops]


def fallback_images(images: list[Image.Image], fallback: Fallback) -> list[Image.Image]:
    """Pick the images to send when the model cannot take the four-image turn.

    ``images`` is the list from :func:`crop_portfolio`. ``"crops_only"`` keeps the three crops, ``"vicrop"`` keeps
    the original and the focal crop, ``"error"`` raises ``ValueError`` (the caller asked not to degrade).
    """
    if len(images) != 4:
        raise ValueError(f"expected the 4 portfolio images, got {len(images)}")
    if fallback == "crops_only":
        return list(images[1:])
    if fallback == "vicrop":
        return [images[0], images[1]]
    if fallback == "error":
        raise ValueError("the model cannot take the four Visual Funnel images and fallback is 'error'")
    raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")


def build_anchor_prompt(question: str, template: str = ANCHOR_PROMPT) -> str:
    """The contextual-anchoring prompt for ``question`` (surrounding whitespace stripped)."""
    _check_template(template)
    return template.format(question=question.strip())


def build_answer_prompt(question: str, vqa: bool, suffix: str = VQA_SUFFIX) -> str:
    """The answer-turn text: the question, plus the short-answer ``suffix`` for VQA tasks."""
    return with_vqa_suffix(question, vqa, suffix)
