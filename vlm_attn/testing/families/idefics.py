"""Tiny Idefics3 and SmolVLM: 48-pixel tiles of 8-pixel patches, pixel shuffle by 2, a Llama text model."""

from __future__ import annotations

from typing import Any, Callable

from ..recipes import TinySpec, tiny_text_config, tiny_vision_config

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
        vision_config=dict(model_type=vision_type, **tiny_vision_config(image_size=TILE, patch_size=PATCH)),
        text_config={"model_type": "llama", **tiny_text_config(len(tok))},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=SCALE,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def idefics3(tokenizer_factory: Callable[..., Any]) -> TinySpec:
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


def smolvlm(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from ...patches.smolvlm import SmolVLMAdapter

    tok = idefics_tokenizer(tokenizer_factory, video=True)
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE}, do_image_splitting=True
    )
    processor = SmolVLMAdapter.assemble(image_processor, tok, IDEFICS_CHAT_TEMPLATE, {"image_seq_len": IMAGE_SEQ_LEN})
    config = tiny_idefics_config(SmolVLMConfig, "smolvlm_vision", tok)
    return TinySpec(config=config, processor=processor, model_class=SmolVLMForConditionalGeneration)
