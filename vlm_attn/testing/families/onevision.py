"""Tiny LLaVA-OneVision: a SigLIP tower (6 x 6 patches, no CLS), anyres tiles and a Qwen2 text model."""

from __future__ import annotations

from typing import Any, Callable

from ..recipes import TinySpec, tiny_siglip_config, tiny_text_config
from .llava import TINY_PINPOINTS

ONEVISION_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ONEVISION_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


def llava_onevision(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from ...patches.llava_onevision import LlavaOnevisionAdapter

    tok = tokenizer_factory(
        ONEVISION_SPECIAL,
        {"image_token": "<image>", "video_token": "<video>"},
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 48, "width": 48}, image_grid_pinpoints=TINY_PINPOINTS
    )
    settings = {
        "num_image_tokens": 36,  # (48 / 8) ** 2 patches of the base image, no CLS (SigLIP)
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
    }
    processor = LlavaOnevisionAdapter.assemble(image_processor, tok, ONEVISION_CHAT_TEMPLATE, settings)
    config = LlavaOnevisionConfig(
        vision_config=tiny_siglip_config(),
        text_config={"model_type": "qwen2", **tiny_text_config(len(tok))},
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=TINY_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return TinySpec(config=config, processor=processor, model_class=LlavaOnevisionForConditionalGeneration)
