"""Qwen2-VL: dynamic-resolution ViT whose 2x2 patch groups merge into one `<|image_pad|>` token; M-RoPE positions.

The processor returns `mm_token_type_ids` (1 on image tokens), which the model requires with images. Its processor
also owns a video processor, which needs torchvision: where torchvision is missing, checkpoints and tiny models get
the image-only processor of `_image_only` (real Qwen tokenizers have no `image_token` attribute: the processor
class's default `<|image_pad|>` is checked against the config's `image_token_id`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ._image_only import ImageOnlyProcessorFamily
from .base import ImageGrid, SinkDimsEntry, register_family

@register_family
class Qwen2VLAdapter(ImageOnlyProcessorFamily):
    model_types = ("qwen2_vl",)
    # SPEC §2.1: Qwen2-VL-7B {458, 2570}.
    known_sink_dims = (
        SinkDimsEntry("Qwen2-VL-7B", ("qwen2_vl_text",), 3584, 28, 28, 4, 18944, (152064,), (458, 2570)),
    )
    model_class_name = "Qwen2VLForConditionalGeneration"
    config_class_name = "Qwen2VLConfig"
    processor_class_name = "Qwen2VLProcessor"
    fixed_focal_side = 224  # SPEC §5: the Funnel's focal side for Qwen-VL (dynamic resolution, no fixed input size)

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The merged grid (h / merge, w / merge) of `image_grid_thw[image_index]` (one temporal frame per image).

        `image_index` counts the images of the batch in order: for a batch of one prompt, the prompt's images.
        """
        thw = inputs.get("image_grid_thw") if hasattr(inputs, "get") else None
        if thw is None:
            raise ValueError("Qwen-VL inputs carry no image_grid_thw: build them with the processor and an image")
        merge = self.config.vision_config.spatial_merge_size
        counts = [int(t * h * w) // merge**2 for t, h, w in thw.tolist()]
        if not 0 <= image_index < len(counts):
            raise ValueError(f"image_index {image_index} out of range for {len(counts)} image(s)")
        _, h, w = (int(v) for v in thw[image_index])
        return ImageGrid(start=sum(counts[:image_index]), shape=(h // merge, w // merge))

    def image_token_ids(self) -> list[int]:
        ids = super().image_token_ids()
        video = getattr(self.config, "video_token_id", None)
        return ids + ([video] if isinstance(video, int) and video not in ids else [])

    # ---- PAI guidance: the image-free prompt drops the whole <|vision_start|> ... <|vision_end|> span
    def image_free_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        start_id = getattr(self.config, "vision_start_token_id", None)
        end_id = getattr(self.config, "vision_end_token_id", None)
        mask = self.image_mask(input_ids, kwargs)
        if isinstance(start_id, int) and isinstance(end_id, int):
            start, end = input_ids == start_id, input_ids == end_id
            depth = start.long().cumsum(1) - end.long().cumsum(1)
            mask = mask | (depth > 0) | end
        return mask

    def drop_image(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **extra: Any
    ) -> dict[str, torch.Tensor]:
        """Base behaviour plus all-zero `mm_token_type_ids` (the prompt is text only). Positions of the guidance
        pass are passed explicitly (`text_position_ids`): M-RoPE degenerates to 1-D positions without an image,
        and the model's stored `rope_deltas` of the main call are neither read nor overwritten."""
        out = super().drop_image(input_ids, attention_mask, **extra)
        out["mm_token_type_ids"] = torch.zeros_like(out["input_ids"])
        return out

    # ---- PAINT: Qwen-VL's ViT has no CLS; 2x2 patches merge into one LM token
    def _merged_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """Permutation from the vision blocks' merged-token order to the LM's (None: already the LM's order)."""
        return None

    def paint_capture(self, sink: Callable[[str, list[Any]], None]) -> list[Any]:
        """Pre-hooks on the first and the last ViT block's attention (the merger reads the last block's output).

        Scores are column means (no CLS, SPEC §4), summed inside each merged 2x2 group (the ViT emits each group's
        four patches consecutively), reordered to the LM's row-major token order and split per image.
        """
        from ..methods.paint.selection import merge_scores
        from ._vision_capture import qwen_column_sums
        from .base import VisionScores

        tower = self.model.model.visual
        merge = int(tower.spatial_merge_size)
        state: dict[str, Any] = {}

        def grab_grid(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
            state["grid"] = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

        def make(kinds: tuple[str, ...]) -> Callable[..., None]:
            def hook(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
                grid = state.get("grid")
                if grid is None:
                    return
                with torch.no_grad():
                    col = qwen_column_sums(module, args, kwargs)
                    merged = merge_scores(col, merge, patch_order="merge_grouped")
                    order = self._merged_order(grid)
                    if order is not None:
                        merged = merged[order.to(merged.device)]
                    patches = grid.prod(dim=-1).tolist()
                    pieces = merged.split([int(n) // (merge * merge) for n in patches])
                    scores = [VisionScores(cls=None, column=p / (module.num_heads * int(n)))
                              for p, n in zip(pieces, patches)]
                for kind in kinds:
                    sink(kind, scores)

            return hook

        blocks = tower.blocks
        last = len(blocks) - 1
        handles = [tower.register_forward_pre_hook(grab_grid, with_kwargs=True)]
        if last == 0:
            handles.append(blocks[0].attn.register_forward_pre_hook(make(("first", "feature")), with_kwargs=True))
        else:
            handles.append(blocks[0].attn.register_forward_pre_hook(make(("first",)), with_kwargs=True))
            handles.append(blocks[last].attn.register_forward_pre_hook(make(("feature",)), with_kwargs=True))
        return handles

    def image_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        types = kwargs.get("mm_token_type_ids")
        if types is not None and types.shape == input_ids.shape:
            return types.to(input_ids.device) > 0
        return super().image_mask(input_ids, kwargs)
