"""Tiny InternVL: 32-pixel tiles of 4-pixel patches, pixel shuffle 0.5, a Qwen2 text model."""

from __future__ import annotations

from typing import Any, Callable

from ..recipes import TinySpec, tiny_text_config, tiny_vision_config

INTERNVL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INTERNVL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
# Tiny geometry: 32-pixel tiles of 4-pixel patches (8 x 8), pixel shuffle 0.5 -> 16 `<IMG_CONTEXT>` tokens a tile.
TILE, PATCH, DOWNSAMPLE = 32, 4, 0.5
IMAGE_SEQ_LENGTH = int((TILE // PATCH) ** 2 * DOWNSAMPLE**2)


def internvl(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from ...patches.internvl import InternVLAdapter

    tok = tokenizer_factory(
        INTERNVL_SPECIAL,
        {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
         "video_token": "<video>"},
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = InternVLAdapter.assemble(image_processor, tok, INTERNVL_CHAT_TEMPLATE,
                                         {"image_seq_length": IMAGE_SEQ_LENGTH})
    config = InternVLConfig(
        vision_config=tiny_vision_config(image_size=[TILE, TILE], patch_size=[PATCH, PATCH]),
        text_config={"model_type": "qwen2", **tiny_text_config(len(tok))},
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=DOWNSAMPLE,
        vision_feature_layer=-1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return TinySpec(config=config, processor=processor, model_class=InternVLForConditionalGeneration)
