"""LLaVA (1.5): CLIP ViT + projector + Llama/Vicuna. One `<image>` token per patch (CLS dropped), in raster order."""

from __future__ import annotations

from typing import Any, Callable

from .base import FamilyAdapter, TinySpec, register_family

LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# SPEC §2.1: LLaMA-2-7B / Vicuna-7B {1415, 2533}; LLaMA-2-13B / Vicuna-13B {2100, 4743}.
VICUNA_SINK_DIMS = {
    name: (4096, (1415, 2533))
    for name in ("llava-1.5-7b", "llava-v1.5-7b", "llava-v1.6-vicuna-7b", "vicuna-7b", "llama-2-7b")
} | {
    name: (5120, (2100, 4743))
    for name in ("llava-1.5-13b", "llava-v1.5-13b", "llava-v1.6-vicuna-13b", "vicuna-13b", "llama-2-13b")
}


def llava_tokenizer(factory: Callable[..., Any]) -> Any:
    return factory(
        ["<pad>", "<s>", "</s>", "<image>"],
        {"image_token": "<image>"},
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def tiny_text_config(vocab_size: int, **extra: Any) -> dict[str, Any]:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        **extra,
    )


def tiny_clip_config() -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=48,
        patch_size=8,
        projection_dim=32,
    )


@register_family
class LlavaAdapter(FamilyAdapter):
    model_types = ("llava",)
    known_sink_dims = VICUNA_SINK_DIMS

    @classmethod
    def tiny_spec(cls, tokenizer_factory: Callable[..., Any]) -> TinySpec:
        from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

        tok = llava_tokenizer(tokenizer_factory)
        image_processor = LlavaImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=8,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
        config = LlavaConfig(
            vision_config={"model_type": "clip_vision_model", **tiny_clip_config()},
            text_config={"model_type": "llama", **tiny_text_config(len(tok))},
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        return TinySpec(config=config, processor=processor, model_class=LlavaForConditionalGeneration)
