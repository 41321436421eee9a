"""LLaVA-NeXT (1.6): anyres tiles. The base image, every tile and the row-newline features all sit on `<image>`
tokens, so the default image mask (token id match) already covers them."""

from __future__ import annotations

from typing import Any, Callable

from .base import FamilyAdapter, TinySpec, register_family
from .llava import LLAVA_CHAT_TEMPLATE, VICUNA_SINK_DIMS, llava_tokenizer, tiny_clip_config, tiny_text_config

TINY_PINPOINTS = [[48, 48], [48, 96], [96, 48], [96, 96]]


@register_family
class LlavaNextAdapter(FamilyAdapter):
    model_types = ("llava_next",)
    known_sink_dims = VICUNA_SINK_DIMS

    @classmethod
    def tiny_spec(cls, tokenizer_factory: Callable[..., Any]) -> TinySpec:
        from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        tok = llava_tokenizer(tokenizer_factory)
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, image_grid_pinpoints=TINY_PINPOINTS
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=8,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
        config = LlavaNextConfig(
            vision_config={"model_type": "clip_vision_model", **tiny_clip_config()},
            text_config={"model_type": "llama", **tiny_text_config(len(tok))},
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            image_grid_pinpoints=TINY_PINPOINTS,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        return TinySpec(config=config, processor=processor, model_class=LlavaNextForConditionalGeneration)
