"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL: dynamic resolution and M-RoPE; they differ in the vision tower (and
Qwen3-VL in 16-pixel patches, interleaved M-RoPE and deepstack)."""

from __future__ import annotations

from typing import Any, Callable

from ..recipes import TinySpec, tiny_text_config

QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]


def qwen_tokenizer(factory: Callable[..., Any]) -> Any:
    return factory(
        QWEN_SPECIAL,
        {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


def _qwen(tokenizer_factory: Callable[..., Any], adapter_cls: type, vision: Callable[[int], dict[str, Any]],
          patch: int, pixels: tuple[int, int], rope: dict[str, Any], ids_on_top: bool = True,
          **text_extra: Any) -> TinySpec:
    """The recipe the three share; `vision(out_hidden)` is the family's tower, `pixels` its (min, max) side;
    `ids_on_top` repeats the pad/eos/bos ids on the top config (Qwen2-VL and 2.5-VL read them there)."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = qwen_tokenizer(tokenizer_factory)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels[0] ** 2, max_pixels=pixels[1] ** 2, patch_size=patch, merge_size=2, temporal_patch_size=2
    )
    processor = adapter_cls.assemble(image_processor, tok, QWEN_CHAT_TEMPLATE, {})
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    text = tiny_text_config(len(tok), rope_parameters=rope, **text_extra, bos_token_id=None,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = getattr(transformers, adapter_cls.config_class_name)(
        text_config=text,
        vision_config=vision(text["hidden_size"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **({"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": None}
           if ids_on_top else {}),
    )
    return TinySpec(config=config, processor=processor, model_class=getattr(transformers, adapter_cls.model_class_name))


MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}


def qwen2_vl(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from ...patches.qwen2_vl import Qwen2VLAdapter

    def vision(out_hidden: int) -> dict[str, Any]:
        return dict(depth=2, embed_dim=32, hidden_size=out_hidden, num_heads=4, mlp_ratio=2,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2)

    return _qwen(tokenizer_factory, Qwen2VLAdapter, vision, 14, (56, 112), MROPE)


def qwen2_5_vl(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from ...patches.qwen2_5_vl import Qwen25VLAdapter

    def vision(out_hidden: int) -> dict[str, Any]:
        return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=out_hidden,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                    fullatt_block_indexes=[1])

    return _qwen(tokenizer_factory, Qwen25VLAdapter, vision, 14, (56, 112), MROPE)


def qwen3_vl(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from ...patches.qwen3_vl import Qwen3VLAdapter

    def vision(out_hidden: int) -> dict[str, Any]:
        return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=out_hidden,
                    patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                    deepstack_visual_indexes=[0, 1])

    return _qwen(tokenizer_factory, Qwen3VLAdapter, vision, 16, (128, 160), MROPE | {"mrope_interleaved": True},
                 ids_on_top=False, head_dim=16)
