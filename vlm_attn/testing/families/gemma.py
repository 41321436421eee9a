"""Tiny Gemma 3 and PaliGemma: SigLIP towers and Gemma text models (head_dim 16)."""

from __future__ import annotations

from typing import Any, Callable

from ..recipes import TinySpec, tiny_siglip_config, tiny_text_config

GEMMA_CHAT_TEMPLATE = (
    "<bos>{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}"
)
GEMMA3_SPECIAL = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"]
PALIGEMMA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
)


def _gemma_text(tok: Any, model_type: str, **extra: Any) -> dict[str, Any]:
    """A tiny Gemma text config; `vocab_size` is read after the processor added its tokens."""
    return tiny_text_config(len(tok), model_type=model_type, head_dim=16, pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra)


def gemma3(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    # Tiny geometry: 64-pixel images of 8-pixel patches (8 x 8), average-pooled to 4 x 4 = 16 soft tokens.
    image_size, patch, tokens_per_image = 64, 8, 16
    tok = tokenizer_factory(
        GEMMA3_SPECIAL,
        {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
        bos_token="<bos>",
        eos_token="<end_of_turn>",
        pad_token="<pad>",
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, chat_template=GEMMA_CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA3_SPECIAL}
    text = _gemma_text(
        tok, "gemma3_text", query_pre_attn_scalar=16,
        # Sliding layers see a window shorter than the prompt, so the tests cover both mask kinds.
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=tiny_siglip_config(image_size, patch),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return TinySpec(config=config, processor=processor, model_class=Gemma3ForConditionalGeneration)


def paligemma(tokenizer_factory: Callable[..., Any]) -> TinySpec:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_size, patch = 48, 8
    tok = tokenizer_factory(
        ["<pad>", "<eos>", "<bos>", "<image>"],
        {"image_token": "<image>"},
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_seq_length=(image_size // patch) ** 2
    )
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok,
                                   chat_template=PALIGEMMA_CHAT_TEMPLATE)
    text = _gemma_text(tok, "gemma")  # after the processor added the loc/seg tokens
    config = PaliGemmaConfig(
        vision_config=tiny_siglip_config(image_size, patch),
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vocab_size=len(tok),
        projection_dim=text["hidden_size"],
        hidden_size=text["hidden_size"],
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return TinySpec(config=config, processor=processor, model_class=PaliGemmaForConditionalGeneration)
