"""InternVL (HF-native `internvl`): InternViT + pixel-shuffle MLP projector + Qwen2 language model.

Each image tile (and the thumbnail, when the image is split) becomes `<img>` + n `<IMG_CONTEXT>` + `</img>`; only the
`<IMG_CONTEXT>` tokens (`config.image_token_id`) carry image features, so only they are image positions. The tiles
of one image are one contiguous run of context tokens. Its processor owns a video processor (torchvision), so without
torchvision its processor is assembled without it (see `_image_only`).
"""

from __future__ import annotations

from typing import Any, Callable

from ._image_only import ImageOnlyProcessorFamily
import torch

from .base import ImageGrid, UnsupportedModelError, VisionScores, concat_scores_per_run, register_family
from .base import SinkDimsEntry

# SPEC §2.1: InternVL2-8B {3584}: its InternLM2-chat-7B language model (kept as `internlm2` or converted to `llama`),
# shape as in the released llm_config.
INTERNVL_SINK_DIMS = (
    SinkDimsEntry("InternVL2-8B (InternLM2-7B)", ("internlm2", "llama"), 4096, 32, 32, 8, 14336, (92553,), (3584,)),
)


@register_family
class InternVLAdapter(ImageOnlyProcessorFamily):
    processor_class_name = "InternVLProcessor"
    model_types = ("internvl",)
    known_sink_dims = INTERNVL_SINK_DIMS

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The grid of image `image_index`'s thumbnail tile: the last tile of its `<IMG_CONTEXT>` run.

        The map must cover the whole image. An image split into tiles gets a thumbnail (the whole image resized to
        one tile) after its tiles (GotOcr2 image processor, `use_thumbnail=True`, its default and the released
        setting); an image that is not split is one tile covering it all. Either way the whole-image view is the
        last tile. A tile is side x side pixel-shuffled patches in row-major order, side = image_size / patch_size
        * downsample_ratio (16 x 16 at 448 / 14 * 0.5). With `use_thumbnail=False` the last tile is a crop, not
        the whole image: keep the default for Visual Funnel and ViCrop.
        """
        from ._grids import check_index, image_runs

        vision = self.config.vision_config
        size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
        side = int(size // patch * self.config.downsample_ratio)
        tile = side * side
        runs = image_runs(self, inputs)
        check_index(image_index, len(runs), "internvl")
        run = runs[image_index]
        if tile < 1 or run.length % tile:
            raise ValueError(f"internvl: image {image_index} holds {run.length} tokens, not a multiple of {tile}")
        return ImageGrid(start=run.offset + run.length - tile, shape=(side, side))

    def paint_capture(self, sink: Callable[[str, list[Any]], None]) -> list[Any]:
        """PAINT on InternViT, which has a CLS token: CLS -> patch attention for the local stream and the summary
        score, the column mean for the spatial stream (SPEC §4, as for LLaVA).

        Layers: the first encoder layer and `vision_feature_layer` (-1 on the released checkpoints: the last layer).
        The "default" feature selection drops CLS, then `pixel_shuffle` by `downsample_ratio` (0.5) stacks 2x2
        patches into one `<IMG_CONTEXT>` token; scores are summed inside each stack, found by running the model's
        own `pixel_shuffle` on the patch indexes. Every tile (and the thumbnail) is scored; an image's tiles form one
        run of context tokens, so their scores are joined per run (`paint_group_scores`) and one selection is made
        over the whole image.
        """
        from ._grids import square_side
        from ._vision_capture import feature_layer_index, group_sum, hook_clip_tower, shuffle_groups

        if getattr(self.config, "vision_feature_select_strategy", "default") != "default":
            raise UnsupportedModelError(
                "internvl: PAINT maps patches to tokens for vision_feature_select_strategy='default' only (the "
                "released setting; with 'full' the CLS token would enter the pixel shuffle)"
            )
        vision = self.config.vision_config
        size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
        patches = (size // patch) ** 2
        side = square_side(patches, "internvl patch grid")
        inner = self.model.model
        ratio = self.config.downsample_ratio
        groups = shuffle_groups(lambda x: inner.pixel_shuffle(x.reshape(1, side, side, 1), scale_factor=ratio),
                                patches)
        layers = inner.vision_tower.encoder.layer
        feature = feature_layer_index(self.config.vision_feature_layer, len(layers))
        return hook_clip_tower(layers, 0, feature, True, sink, attention="attention", reduce=group_sum(groups))

    def paint_group_scores(self, run_lengths: list[int], scores: list[VisionScores]) -> list[VisionScores]:
        """An image's tiles and thumbnail are one run of `<IMG_CONTEXT>` tokens: their scores are joined per run."""
        return concat_scores_per_run(run_lengths, scores)

    def image_free_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """Each image's `<img>` + context tokens + `</img>`: the tokens right before and after every run of
        `<IMG_CONTEXT>` (the config names no wrapper ids; the processor always writes the pair around a run)."""
        mask = self.image_mask(input_ids, kwargs)
        before = torch.zeros_like(mask)
        after = torch.zeros_like(mask)
        before[:, :-1] = mask[:, 1:] & ~mask[:, :-1]  # the token just before a run starts
        after[:, 1:] = mask[:, :-1] & ~mask[:, 1:]  # the token just after a run ends
        return mask | before | after

    @classmethod
    def processor_settings(cls, processor: Any) -> dict[str, Any]:
        return {"image_seq_length": processor.image_seq_length}
