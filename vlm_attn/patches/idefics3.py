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

from torch import nn

from .base import FamilyAdapter, ImageGrid, TinySpec, register_family
from .llava import tiny_text_config

IDEFICS_CHAT_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
ROW_COL_TOKENS = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
IDEFICS_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                   "<global-img>", *ROW_COL_TOKENS]
# Tiny geometry: 48-pixel tiles of 8-pixel patches (36 patches), pixel shuffle by 2 -> 9 `<image>` tokens a tile.
TILE, PATCH, SCALE = 48, 8, 2
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2


def idefics_tokenizer(factory: Callable[..., Any], video: bool = False) -> Any:
    """The Idefics3 / SmolVLM special tokens, named as their processors look them up (SmolVLM adds `<video>`)."""
    named = {
        "image_token": "<image>",
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
    }
    return factory(
        IDEFICS_SPECIAL + (["<video>"] if video else []),
        named | ({"video_token": "<video>"} if video else {}),
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
    )


def tiny_idefics_config(config_class: type, vision_type: str, tok: Any) -> Any:
    """Config of a tiny Idefics3-style model (`vision_type`: the vision sub-config's model_type)."""
    return config_class(
        vision_config=dict(model_type=vision_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=TILE, patch_size=PATCH),
        text_config={"model_type": "llama", **tiny_text_config(len(tok))},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=SCALE,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


@register_family
class Idefics3Adapter(FamilyAdapter):
    model_types = ("idefics3",)

    def language_model(self) -> nn.Module:
        """Idefics3 and SmolVLM name their language model `text_model`."""
        return self.model.model.text_model

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

    @classmethod
    def tiny_spec(cls, tokenizer_factory: Callable[..., Any]) -> TinySpec:
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        tok = idefics_tokenizer(tokenizer_factory)
        image_processor = Idefics3ImageProcessorPil(
            size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE}, do_image_splitting=True
        )
        processor = Idefics3Processor(
            image_processor=image_processor, tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN,
            chat_template=IDEFICS_CHAT_TEMPLATE,
        )
        config = tiny_idefics_config(Idefics3Config, "idefics3_vision", tok)
        return TinySpec(config=config, processor=processor, model_class=Idefics3ForConditionalGeneration)
