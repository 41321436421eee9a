"""LLaVA-NeXT (1.6): anyres tiles. The base image, every tile and the row-newline features all sit on `<image>`
tokens, so the default image mask (token id match) already covers them."""

from __future__ import annotations

from typing import Any, Callable

from .base import FamilyAdapter, ImageGrid, register_family
from .llava import (
    VICUNA_SINK_DIMS,
    llava_base_grid,
)

@register_family
class LlavaNextAdapter(FamilyAdapter):
    model_types = ("llava_next",)
    known_sink_dims = VICUNA_SINK_DIMS
    published_anchor_layers = {32: 14}  # the Vicuna-7B language model of LLaVA-1.5-7B

    def paint_capture(self, sink: Callable[[str, list[Any]], None]) -> list[Any]:
        """PAINT reads the base (whole-image) view of each anyres image (our choice, documented).

        The tower encodes [base, tile_1, ..., tile_k] per image; only the base entries are scored, and their scores
        map onto the base block, which the model puts first in each image's token run (`paint_image_positions`).
        Tiles and newline tokens are not amplified. The per-image tile counts come from `image_sizes`, which only
        `get_image_features` sees: it is wrapped on this model instance (removed again on `remove`).
        """
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        from ._vision_capture import first_entries_of_each_image
        from .llava import llava_paint_capture

        config = self.config

        def tile_counts(args: tuple, kwargs: dict[str, Any]) -> list[int] | None:
            sizes = kwargs.get("image_sizes", args[1] if len(args) > 1 else None)
            if sizes is None:
                return None
            return [image_size_to_num_patches(image_size=s, grid_pinpoints=config.image_grid_pinpoints,
                                              patch_size=config.vision_config.image_size) for s in sizes]

        override, entries = first_entries_of_each_image(self.model.model, tile_counts)
        return [override, *llava_paint_capture(self, sink, entries)]

    def paint_image_positions(self, run: Any, num_scores: int) -> Any:
        from .llava import llava_image_positions

        return llava_image_positions(self.config, run, num_scores)

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The base (whole-image) grid, which leads each image's tokens before the anyres tiles and newlines.

        Later images start after a size-dependent number of tile tokens, so only the first image is located.
        """
        if image_index != 0:
            raise ValueError("llava_next: only the first image's grid can be located (tile counts vary per image)")
        return llava_base_grid(self.config, 0, tokens_per_image=0)

    def seen_region(
        self, processor: Any, image_size: tuple[int, int], inputs: Any = None, image_index: int = 0
    ) -> tuple[float, float, float, float]:
        """The base view is the whole image stretched to the square `size` (then the per-patch resize and centre
        crop, which keep all of it when crop_size equals the size, as on the released checkpoints)."""
        from ._geometry import anyres_base_view

        return anyres_base_view(processor, image_size).region
