"""Idefics3: SigLIP-style ViT, pixel-shuffle connector, Llama language model; the image is split into tiles.

Each tile is written `<fake_token_around_image><row_i_col_j><image>*n`, rows end with a newline, and the downscaled
global image follows as `<fake_token_around_image><global-img><image>*n<fake_token_around_image>`. Only the
`<image>` tokens carry image features, so only they are image positions: the wrapper tokens are text, and they sit
*between* image spans. VAR's text rows after the first image token therefore include those wrappers, so rows
inside the image layout (after the first wrapper that follows an image span) can move under VAR; rows before that
wrapper cannot.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .base import FamilyAdapter, ImageGrid, register_family

@register_family
class Idefics3Adapter(FamilyAdapter):
    model_types = ("idefics3",)

    def language_model(self) -> nn.Module:
        """Idefics3 and SmolVLM name their language model `text_model`."""
        return self.model.model.text_model

    def vision_encoder(self) -> nn.Module:
        """The SigLIP-style vision transformer (`model.vision_model`)."""
        return self.model.model.vision_model

    def paint_capture(self, sink: Callable[[str, list[Any]], None]) -> list[Any]:
        """PAINT on every encoded view: each tile and the global view is scored and selected on its own (ours).

        The encoder has no CLS, so both streams and the summary score are column means (SPEC §4, ours). Layers: the
        first encoder layer and the last (the connector reads `last_hidden_state`; these configs have no
        `vision_feature_layer`). The connector's pixel shuffle stacks `scale_factor`^2 patches into one `<image>`
        token; scores are summed inside each stacked group, found by running the connector's own `pixel_shuffle` on
        the patch indexes. The encoder sees the real views of the batch in prompt order (each image's tiles in
        row-major order, then its global view), and each view is one run of `<image>` tokens between its wrapper
        tokens, so view i maps onto run i, one token per group, in order.
        """
        from ._vision_capture import group_sum, hook_clip_tower, shuffle_groups

        connector = self.model.model.connector
        vision = self.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        factor = int(self.config.scale_factor)
        groups = shuffle_groups(lambda x: connector.pixel_shuffle(x, factor), patches)
        layers = self.vision_encoder().encoder.layers
        return hook_clip_tower(layers, 0, len(layers) - 1, False, sink, reduce=group_sum(groups))

    def image_free_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The whole image block: from the `<fake_token_around_image>` that opens an image's first view to the one
        that closes its global view, with the `<row_i_col_j>` / `<global-img>` markers, the `<image>` runs and the
        row newlines between them.

        The config names no wrapper ids, so the layout is read from the prompt: the token two before a view's run
        opens it (`<fake_token_around_image>`), the token just before it is its marker, and the global view (whose
        marker is the one before the sample's last run, as in `image_grid`) ends the image, closed by the token after
        its run.
        """
        mask = self.image_mask(input_ids, kwargs)
        out = mask.clone()
        for b in range(input_ids.shape[0]):
            ids = input_ids[b].tolist()
            positions = torch.nonzero(mask[b]).flatten().tolist()
            runs = [p for i, p in enumerate(positions) if i == 0 or positions[i - 1] != p - 1]
            if not runs:
                continue
            ends = {p: p for p in runs}
            for p in positions:
                start = max(r for r in runs if r <= p)
                ends[start] = p
            global_marker = ids[runs[-1] - 1] if runs[-1] > 0 else None
            opened: int | None = None
            for start in runs:
                if opened is None:
                    opened = start - 2 if start >= 2 else start
                if start > 0 and ids[start - 1] == global_marker:
                    close = ends[start] + 1
                    last = close if close < len(ids) and ids[close] == ids[opened] else ends[start]
                    out[b, opened : last + 1] = True
                    opened = None
        return out

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The grid of image `image_index`'s global (whole-image, downscaled) view, which ends the image's tokens.

        Tiles cover parts of the image; the global view covers all of it, as the Funnel's map must. Every image ends
        with `<global-img>` + its run of `<image>` tokens (split or not), so the token before the prompt's last
        image run is `<global-img>`, and the runs that follow that token are the images' global views, in order.
        The run is the pixel-shuffled patch grid in row-major order: side = image_size / patch_size / scale_factor
        (13 x 13 for Idefics3-8B at 364 / 14 / 2). The global view is the whole image resized to one square tile.
        """
        from ._grids import check_index, image_runs, prompt_ids

        family = self.model_types[0]
        ids = prompt_ids(inputs)
        runs = image_runs(self, inputs)
        check_index(image_index, len(runs), family)  # a prompt without image tokens fails here
        global_id = int(ids[runs[-1].position - 1]) if runs[-1].position > 0 else None
        views = [r for r in runs if r.position > 0 and int(ids[r.position - 1]) == global_id]
        check_index(image_index, len(views), family)
        run = views[image_index]
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size // self.config.scale_factor
        if run.length != side * side:
            raise ValueError(
                f"{family}: the global image run holds {run.length} tokens, expected {side}x{side} "
                f"(image_size {vision.image_size} / patch_size {vision.patch_size} / scale_factor "
                f"{self.config.scale_factor})"
            )
        return ImageGrid(start=run.offset, shape=(side, side))
