"""Tiny LLaVA-1.5 and LLaVA-NeXT: a CLIP tower (CLS + 6 x 6 patches of 8 pixels) and a Llama text model."""

from __future__ import annotations

from typing import Any, Callable

from ..recipes import TinySpec, tiny_clip_config, tiny_text_config

LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TINY_PINPOINTS = [[48, 48], [48, 96], [96, 48], [96, 96]]  # anyres tiles of 48 pixels (NeXT, OneVision)


def _llava_like(tokenizer_factory: Callable[..., Any], processor_class: type, config_class: type, model_class: type,
                image_processor: Any, **extra: Any) -> TinySpec:
    """The part LLaVA and LLaVA-NeXT share: tokenizer, processor settings, CLIP + Llama config."""
    tok = tokenizer_factory(
        ["<pad>", "<s>", "</s>", "<image>"],
        {"image_token": "<image>"},
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = config_class(
        vision_config={"model_type": "clip_vision_model", **tiny_clip_config()},
        text_config={"model_type": "llama", **tiny_text_config(len(tok))},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **extra,
    )
    return TinySpec(config=config, processor=processor, model_class=model_class)


def llava(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    return _llava_like(tokenizer_factory, LlavaProcessor, LlavaConfig, LlavaForConditionalGeneration, image_processor)


def llava_next(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, image_grid_pinpoints=TINY_PINPOINTS
    )
    return _llava_like(tokenizer_factory, LlavaNextProcessor, LlavaNextConfig, LlavaNextForConditionalGeneration,
                       image_processor, image_grid_pinpoints=TINY_PINPOINTS)
