"""PaliGemma: SigLIP + linear projector + Gemma language model, with a bidirectional prefix.

The prompt is `<image>*n <bos> prompt \\n` (the processor inserts `<bos>` after the image tokens and the newline at
the end; there is no chat turn structure). The processor returns `token_type_ids` (0 on the prefix = image + prompt),
and at prefill the model lets every prefix token attend to every other prefix token; only generated tokens are
causal. So the image rows see the prompt text that follows them: VAR, which edits the prompt's text rows (text
after the first image token) from layer 2 on, changes the image rows' inputs at the next layer too. What stays
exact is this: VAR never edits an image row, so within any one layer the image rows' outputs move only through
their inputs; with VAR on the last layer alone, the image rows' logits are bitwise those of the vanilla model.

The processor adds PaliGemma's 1024 `<locNNNN>` and 128 `<segNNN>` tokens to the tokenizer, so the vocabulary size
is read after the processor is built.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .base import FamilyAdapter, ImageGrid, VisionScores, concat_scores_per_run, register_family

@register_family
class PaliGemmaAdapter(FamilyAdapter):
    model_types = ("paligemma",)

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The SigLIP patch grid of image `image_index`, side = image_size // patch_size (16 x 16 at 224 / 14).

        The processor writes the images' tokens back to back at the start of the prompt (k images: k * side^2
        `<image>` tokens, then `<bos>` and the text), and the model fills them with each image's patches in
        order, so image i starts at i * side^2. Several images in one prompt work mechanically (the Funnel's
        answer turn); the released checkpoints were trained with one image per prompt, so how well they use four
        is a property of the checkpoint (multi-image is a fine-tuning setting of PaliGemma).
        """
        from ._grids import check_index, image_runs

        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        total = sum(run.length for run in image_runs(self, inputs))
        check_index(image_index, total // (side * side), "paligemma")
        return ImageGrid(start=image_index * side * side, shape=(side, side))

    def paint_capture(self, sink: Callable[[str, list[Any]], None]) -> list[Any]:
        """PAINT on SigLIP: one `<image>` token per patch, no CLS (column-mean scores for both streams and the
        summary, SPEC §4, ours). Layers: the first encoder layer and the last (the projector reads
        `last_hidden_state`; PaliGemma has no `vision_feature_layer`)."""
        from ._vision_capture import hook_clip_tower

        tower = self.model.model.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        return hook_clip_tower(layers, 0, len(layers) - 1, False, sink)

    def paint_group_scores(self, run_lengths: list[int], scores: list[VisionScores]) -> list[VisionScores]:
        """Several images of one prompt sit back to back in one `<image>` run: their scores are joined per run, so
        the selection ratios and the summary outliers are taken over the run's images together."""
        return concat_scores_per_run(run_lengths, scores)

    def drop_image(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **extra: Any
    ) -> dict[str, torch.Tensor]:
        """Base behaviour (the `<image>` tokens go; `<bos>`, the prompt and its newline stay) plus all-zero
        `token_type_ids`: the text-only prompt is still PaliGemma's prefix, which the model attends to
        bidirectionally at prefill, as it does with an image."""
        out = super().drop_image(input_ids, attention_mask, **extra)
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
        return out

    def text_position_ids(self, attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """PaliGemma's positions are 1-indexed (the model and its `generate` add 1)."""
        return super().text_position_ids(attention_mask, new_tokens) + 1
