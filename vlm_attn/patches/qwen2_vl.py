"""Qwen2-VL: dynamic-resolution ViT whose 2x2 patch groups merge into one `<|image_pad|>` token; M-RoPE positions.

The processor returns `mm_token_type_ids` (1 on image tokens), which the model requires with images. Its processor
also owns a video processor, which needs torchvision: where torchvision is missing the tiny model gets an
image-only processor assembled from its tokenizer and PIL image processor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from .base import FamilyAdapter, TinySpec, register_family

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


def image_only_processor(processor_class: type, image_processor: Any, tokenizer: Any, chat_template: str) -> Any:
    """A Qwen-VL processor without its video processor (which cannot be built without torchvision).

    `ProcessorMixin.__init__` refuses a missing video processor, so the instance is assembled with the same
    attributes the class's own `__init__` sets; image and text calls never touch the video processor.
    """
    proc = processor_class.__new__(processor_class)
    proc.chat_template = chat_template
    proc.image_processor = image_processor
    proc.tokenizer = tokenizer
    proc.video_processor = None
    proc.image_token = tokenizer.image_token
    proc.video_token = tokenizer.video_token
    proc.image_token_id = tokenizer.convert_tokens_to_ids(proc.image_token)
    proc.video_token_id = tokenizer.convert_tokens_to_ids(proc.video_token)
    return proc


def tiny_qwen_text(vocab_size: int) -> dict[str, Any]:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    )


@register_family
class Qwen2VLAdapter(FamilyAdapter):
    model_types = ("qwen2_vl",)
    # SPEC §2.1: Qwen2-VL-7B {458, 2570}.
    known_sink_dims = {"qwen2-vl-7b": (3584, (458, 2570))}
    model_class_name = "Qwen2VLForConditionalGeneration"
    config_class_name = "Qwen2VLConfig"

    def image_token_ids(self) -> list[int]:
        ids = super().image_token_ids()
        video = getattr(self.config, "video_token_id", None)
        return ids + ([video] if isinstance(video, int) and video not in ids else [])

    def image_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        types = kwargs.get("mm_token_type_ids")
        if types is not None and types.shape == input_ids.shape:
            return types.to(input_ids.device) > 0
        return super().image_mask(input_ids, kwargs)

    @classmethod
    def tiny_vision(cls, out_hidden: int) -> dict[str, Any]:
        return dict(depth=2, embed_dim=32, hidden_size=out_hidden, num_heads=4, mlp_ratio=2,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2)

    @classmethod
    def tiny_spec(cls, tokenizer_factory: Callable[..., Any]) -> TinySpec:
        import transformers
        from transformers import Qwen2VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tok = qwen_tokenizer(tokenizer_factory)
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2
        )
        processor = image_only_processor(Qwen2VLProcessor, image_processor, tok, QWEN_CHAT_TEMPLATE)
        ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
        text = tiny_qwen_text(len(tok)) | {"bos_token_id": None, "eos_token_id": tok.eos_token_id,
                                           "pad_token_id": tok.pad_token_id}
        config = getattr(transformers, cls.config_class_name)(
            text_config=text,
            vision_config=cls.tiny_vision(text["hidden_size"]),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
        )
        return TinySpec(config=config, processor=processor,
                        model_class=getattr(transformers, cls.model_class_name))

    @classmethod
    def save_tiny_processor(cls, processor: Any, path: Any) -> None:
        processor.tokenizer.save_pretrained(path)
        processor.image_processor.save_pretrained(path)
        Path(path, "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}))

    @classmethod
    def load_tiny_processor(cls, path: str) -> Any:
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLProcessor

        try:
            return super().load_tiny_processor(path)
        except (ImportError, AttributeError, OSError, ValueError, TypeError):
            template = json.loads(Path(path, "chat_template.json").read_text())["chat_template"]
            return image_only_processor(
                Qwen2VLProcessor, AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path), template
            )
