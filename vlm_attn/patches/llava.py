"""LLaVA (1.5): CLIP ViT + projector + Llama/Vicuna. One `<image>` token per patch (CLS dropped), in raster order."""

from __future__ import annotations

from typing import Any, Callable

from .base import FamilyAdapter, ImageGrid, SinkDimsEntry, register_family

# SPEC §2.1: LLaMA-2-7B / Vicuna-7B {1415, 2533}; LLaMA-2-13B / Vicuna-13B {2100, 4743}. LLaVA-1.5 and
# LLaVA-NeXT-vicuna keep their base model's shape; the llava-hf conversions pad the vocabulary to 32064.
# LLaVA-NeXT-mistral (mistral, 8 kv heads, 14336 intermediate) matches neither.
VICUNA_SINK_DIMS = (
    SinkDimsEntry("LLaMA-2-7B / Vicuna-7B", ("llama",), 4096, 32, 32, 32, 11008, (32000, 32064), (1415, 2533)),
    SinkDimsEntry("LLaMA-2-13B / Vicuna-13B", ("llama",), 5120, 40, 40, 40, 13824, (32000, 32064), (2100, 4743)),
)


def llava_paint_capture(adapter: FamilyAdapter, sink: Callable[[str, list[Any]], None], entries: Any) -> list[Any]:
    """PAINT's vision hooks on a LLaVA-style CLIP tower (shared by LLaVA and LLaVA-NeXT)."""
    from ._vision_capture import feature_layer_index, hook_clip_tower

    tower = adapter.model.model.vision_tower
    inner = getattr(tower, "vision_model", tower)  # CLIPVisionModel holds the encoder directly in transformers 5
    layers = inner.encoder.layers
    feature = feature_layer_index(adapter.config.vision_feature_layer, len(layers))
    return hook_clip_tower(layers, 0, feature, True, sink, entries=entries)


def llava_image_positions(config: Any, run: Any, num_scores: int) -> Any:
    offset = 0 if getattr(config, "vision_feature_select_strategy", "default") == "default" else 1
    if run.numel() < offset + num_scores:
        raise ValueError(f"an image has {run.numel()} LM image tokens but its vision scores cover {num_scores}")
    return run[offset : offset + num_scores]


def llava_base_grid(config: Any, image_index: int, tokens_per_image: int | None = None) -> ImageGrid:
    """The CLIP patch grid of one image: side = image_size // patch_size; a CLS token leads it with "full".

    `tokens_per_image` is the image's whole token count when it differs from the grid (LLaVA-NeXT: only
    `image_index` 0 can be located then, since later images' counts depend on their sizes).
    """
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    cls = 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0
    per_image = side * side + cls if tokens_per_image is None else tokens_per_image
    return ImageGrid(start=image_index * per_image + cls, shape=(side, side))


@register_family
class LlavaAdapter(FamilyAdapter):
    model_types = ("llava",)
    known_sink_dims = VICUNA_SINK_DIMS
    published_anchor_layers = {32: 14}  # LLaVA-1.5-7B (SPEC §5)

    def paint_capture(self, sink: Callable[[str, list[Any]], None]) -> list[Any]:
        """CLIP with CLS: first encoder layer and the layer whose output the projector reads (-2: layer L_v - 2)."""
        return llava_paint_capture(self, sink, entries=None)

    def paint_image_positions(self, run: Any, num_scores: int) -> Any:
        """'default' feature selection drops CLS (one LM token per patch); 'full' keeps it as the first token."""
        return llava_image_positions(self.config, run, num_scores)

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """Each image is (image_size / patch_size)^2 tokens in raster order (plus a leading CLS with "full")."""
        from ._grids import check_index, image_runs

        first = llava_base_grid(self.config, 0)
        per_image = first.start + first.cells
        check_index(image_index, sum(r.length for r in image_runs(self, inputs)) // per_image, "llava")
        return llava_base_grid(self.config, image_index)

    def seen_region(
        self, processor: Any, image_size: tuple[int, int], inputs: Any = None, image_index: int = 0
    ) -> tuple[float, float, float, float]:
        """The centre square the CLIP processor keeps: (pad to square with `do_pad`,) resize the shortest edge,
        centre-crop. LLaVA-1.5 (336 px) on a 640 x 480 photo sees x 80..560 of it, all of y."""
        from ._geometry import View, clip_style_view, image_processor

        proc = image_processor(processor)
        return clip_style_view(proc, View.of(image_size), pad_first=bool(getattr(proc, "do_pad", False))).region
