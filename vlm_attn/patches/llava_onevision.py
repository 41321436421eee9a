"""LLaVA-OneVision: SigLIP + projector + Qwen2 language model, anyres tiling like LLaVA-NeXT.

The base image, the tiles (unpadded) and the row-newline features all sit on `<image>` tokens, so the default image
mask (token id match) covers them. Its processor owns a video processor (torchvision), so without torchvision its
processor is assembled without it (see `_image_only`).
"""

from __future__ import annotations

from typing import Any, Callable

from ._image_only import ImageOnlyProcessorFamily
from .base import ImageGrid, register_family

@register_family
class LlavaOnevisionAdapter(ImageOnlyProcessorFamily):
    model_types = ("llava_onevision",)
    processor_class_name = "LlavaOnevisionProcessor"

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The base (whole-image) grid of SigLIP patches, side = image_size // patch_size (27 x 27 at 384 / 14).

        A prompt with one image gets anyres: the base grid leads the image's tokens, then the unpadded tiles and
        their row newlines, so only that image is located. A prompt with several images (the Funnel's answer turn)
        gets the base grid plus one newline token per image, so image i starts at i * (side^2 + 1). Only the
        "full" feature selection keeps a square base grid (SigLIP has no CLS; "default" drops a real patch).
        """
        from ._grids import check_index, prompt_ids

        if getattr(self.config, "vision_feature_select_strategy", "full") != "full":
            raise ValueError(
                "llava_onevision: the image grid is known for vision_feature_select_strategy='full' only (the "
                "released checkpoints' setting); 'default' drops the first SigLIP patch"
            )
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        prompt_ids(inputs)
        counts = inputs.get("batch_num_images")
        count = int(counts[0]) if counts is not None else 1
        check_index(image_index, count, "llava_onevision")
        return ImageGrid(start=image_index * (side * side + 1) if count > 1 else 0, shape=(side, side))

    def seen_region(
        self, processor: Any, image_size: tuple[int, int], inputs: Any = None, image_index: int = 0
    ) -> tuple[float, float, float, float]:
        """One image per prompt: the anyres base view, the whole image stretched to `size`. Several images per
        prompt: each is padded to a square (centred) and resized, so the grid reaches past the image's short sides."""
        from ._geometry import View, anyres_base_view, clip_style_view

        counts = inputs.get("batch_num_images") if inputs is not None and hasattr(inputs, "get") else None
        if counts is not None and int(counts[0]) > 1:
            return clip_style_view(processor, View.of(image_size), pad_first=True).region
        return anyres_base_view(processor, image_size).region

    def paint_capture(self, sink: Callable[[str, list[Any]], None]) -> list[Any]:
        """PAINT reads the base (whole-image) view of each image, like LLaVA-NeXT (our choice, documented).

        SigLIP has no CLS: both streams and the summary score use column means (SPEC §4, ours). Layers: the first
        encoder layer and `vision_feature_layer` (-1 on the released checkpoints: the last layer, whose output the
        projector reads). The tower encodes [base, tile_1, ..., tile_k] per anyres image and only the base view of
        an image in a multi-image prompt; only the base entries are scored, and they map onto the base block that
        leads each image's token run. Tiles and newline tokens are not amplified. The per-image view counts come from
        `image_sizes` and `batch_num_images`, which only `get_image_features` sees: it is wrapped on this model
        instance (removed again on `remove`). With "default" feature selection the first patch is dropped, as the
        model drops it.
        """
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        from ._vision_capture import feature_layer_index, first_entries_of_each_image, hook_clip_tower

        inner = self.model.model
        config = self.config

        def tile_counts(args: tuple, kwargs: dict[str, Any]) -> list[int] | None:
            sizes = kwargs.get("image_sizes", args[1] if len(args) > 1 else None)
            if sizes is None:
                return None
            per_sample = kwargs.get("batch_num_images")  # several images in one sample are not tiled
            patching = [True] * len(sizes) if per_sample is None else [int(n) == 1 for n in per_sample
                                                                       for _ in range(int(n))]
            return [image_size_to_num_patches(image_size=size, grid_pinpoints=config.image_grid_pinpoints,
                                              patch_size=config.vision_config.image_size) if tiled else 1
                    for size, tiled in zip(sizes, patching)]

        def drop_first(scores: Any) -> Any:
            return scores[1:]

        tower = inner.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        feature = feature_layer_index(config.vision_feature_layer, len(layers))
        default = getattr(config, "vision_feature_select_strategy", "full") == "default"
        override, entries = first_entries_of_each_image(inner, tile_counts)
        return [override, *hook_clip_tower(layers, 0, feature, False, sink, entries=entries,
                                           reduce=drop_first if default else None)]

    @classmethod
    def processor_settings(cls, processor: Any) -> dict[str, Any]:
        return {
            "num_image_tokens": processor.num_image_tokens,
            "vision_feature_select_strategy": processor.vision_feature_select_strategy,
            "vision_aspect_ratio": processor.vision_aspect_ratio,
        }
