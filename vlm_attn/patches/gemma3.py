"""Gemma 3: SigLIP + average-pool projector + Gemma 3 language model with sliding-window and full-attention layers.

The chat template writes `<start_of_image>`; the processor expands it to `<start_of_image>`, `mm_tokens_per_image`
`<image_soft_token>` tokens and `<end_of_image>`. Only the soft tokens are image positions (`image_token_index`).
The processor returns `token_type_ids` (1 on the soft tokens), from which the model builds a *bidirectional* block
over each image's soft tokens in every layer's mask (sliding and full); our attention function gets that mask from
`sdpa_mask` (registered under our name, SPEC §1.2), so the block is kept. VAR edits text rows only and no image row
may look at text after the image, so rows up to the last image token are untouched exactly as in a causal model.

A fresh config zero-initialises `mm_input_projection_weight` (images would vanish); the tiny model's weight redraw
covers it (`vlm_attn.testing.tiny._redraw`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .base import FamilyAdapter, ImageGrid, UnsupportedModelError, register_family

@register_family
class Gemma3Adapter(FamilyAdapter):
    model_types = ("gemma3",)

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The soft-token grid of image `image_index`: `mm_tokens_per_image` average-pooled SigLIP patches in
        row-major order (16 x 16 = 256 on the released models), one `<start_of_image>` block per image.

        With pan-and-scan (off by default) an image's crops follow its full view as blocks of their own, so the
        index counts blocks: block 0 is always the first image's full view.
        """
        from ._grids import check_index, image_runs, square_side

        tokens = int(self.config.mm_tokens_per_image)
        side = square_side(tokens, "gemma3 mm_tokens_per_image")
        runs = image_runs(self, inputs)
        check_index(image_index, len(runs), "gemma3")
        run = runs[image_index]
        if run.length != tokens:
            raise ValueError(f"gemma3: image block {image_index} holds {run.length} soft tokens, expected {tokens}")
        return ImageGrid(start=run.offset, shape=(side, side))

    def seen_region(
        self, processor: Any, image_size: tuple[int, int], inputs: Any = None, image_index: int = 0
    ) -> tuple[float, float, float, float]:
        """The whole image, resized to the square encoder input. With pan-and-scan, blocks after the first image's
        full view may be crops, whose place is not tracked: only block 0 is located then."""
        from ._geometry import image_processor

        if image_index > 0 and getattr(image_processor(processor), "do_pan_and_scan", False):
            raise ValueError(
                "gemma3: with pan-and-scan on, only the first image's full view (image_index 0) has a known place; "
                "turn do_pan_and_scan off to locate later images"
            )
        return super().seen_region(processor, image_size, inputs, image_index)

    def paint_capture(self, sink: Callable[[str, list[Any]], None]) -> list[Any]:
        """PAINT on SigLIP (no CLS: column-mean scores for both streams and the summary, SPEC §4, ours).

        Layers: the first encoder layer and the last (the projector reads `last_hidden_state`; Gemma 3 has no
        `vision_feature_layer`). The projector average-pools the (image_size / patch_size)^2 patch grid into
        `mm_tokens_per_image` soft tokens; scores are summed inside each pooled cell, cells in row-major order, and
        each encoded image (pan-and-scan crops included) is one soft-token block.
        """
        from ._grids import square_side
        from ..methods.paint.selection import merge_scores
        from ._vision_capture import hook_clip_tower

        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        cells = square_side(int(self.config.mm_tokens_per_image), "gemma3 mm_tokens_per_image")
        if side % cells:
            raise UnsupportedModelError(
                f"gemma3: a {side}x{side} patch grid does not pool evenly into {cells}x{cells} soft tokens"
            )
        tower = self.model.model.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        kernel = side // cells
        reduce = lambda scores: merge_scores(scores, kernel, (side, side))  # noqa: E731  (row-major cells)
        return hook_clip_tower(layers, 0, len(layers) - 1, False, sink, reduce=reduce)

    def image_free_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The `<start_of_image>` ... `<end_of_image>` span around each image's soft tokens (the processor writes it
        as `\n\n<start_of_image>` + soft tokens + `<end_of_image>\n\n`; the newlines stay)."""
        mask = self.image_mask(input_ids, kwargs)
        start_id = getattr(self.config, "boi_token_index", None)
        end_id = getattr(self.config, "eoi_token_index", None)
        if isinstance(start_id, int) and isinstance(end_id, int):
            start, end = input_ids == start_id, input_ids == end_id
            depth = start.long().cumsum(1) - end.long().cumsum(1)
            mask = mask | (depth > 0) | end
        return mask
