"""Helpers for `FamilyAdapter.image_grid`: the runs of image tokens in one prompt and square token grids.

Families whose processor output does not state each image's token count (Idefics3 / SmolVLM tiles, InternVL tiles,
LLaVA-OneVision's anyres layout) locate an image's grid from the prompt's token layout: the image tokens of one
prompt form contiguous runs (one per image, or one per tile), separated by text tokens (wrappers, newlines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .base import FamilyAdapter


@dataclass(frozen=True)
class ImageRun:
    """One contiguous run of image tokens in a prompt.

    `offset` counts the prompt's image tokens before the run (what `ImageGrid.start` measures), `position` is the
    index of the run's first token in `input_ids`, `length` the run's token count.
    """

    offset: int
    position: int
    length: int


def prompt_ids(inputs: Any) -> torch.Tensor:
    """The (T,) input ids of the single prompt in processor outputs `inputs` (a batch of one is required)."""
    ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
    if ids is None:
        raise ValueError("image_grid needs processor outputs with input_ids (build them with the processor)")
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(
            f"image_grid reads the token layout of one prompt: input_ids must have shape (1, T), got {tuple(ids.shape)}"
        )
    return ids[0]


def image_runs(adapter: "FamilyAdapter", inputs: Any) -> list[ImageRun]:
    """The runs of image tokens of the one prompt in `inputs`, in order (empty when the prompt has no image)."""
    ids = prompt_ids(inputs)
    mask = adapter.image_mask(ids[None], dict(inputs))[0].cpu()
    positions = torch.nonzero(mask).flatten().tolist()
    runs: list[ImageRun] = []
    offset = 0
    for index, pos in enumerate(positions):
        if index == 0 or pos != positions[index - 1] + 1:
            runs.append(ImageRun(offset=offset, position=pos, length=0))
        last = runs[-1]
        runs[-1] = ImageRun(offset=last.offset, position=last.position, length=last.length + 1)
        offset += 1
    return runs


def square_side(tokens: int, what: str) -> int:
    """The side of a square grid of `tokens` tokens, or a ValueError naming `what` when it is not square."""
    side = math.isqrt(tokens)
    if tokens < 1 or side * side != tokens:
        raise ValueError(f"{what}: {tokens} tokens do not form a square grid")
    return side


def check_index(image_index: int, count: int, family: str) -> None:
    """A ValueError when `image_index` is not one of the `count` images of the prompt (or it has none)."""
    if count == 0:
        raise ValueError(f"{family}: the prompt holds no image tokens: put the image in the prompt")
    if not 0 <= image_index < count:
        raise ValueError(f"{family}: image_index {image_index} out of range for a prompt with {count} image(s)")
