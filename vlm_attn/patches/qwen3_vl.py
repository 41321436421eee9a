"""Qwen3-VL: Qwen2-VL's `<|image_pad|>` layout and `mm_token_type_ids`, interleaved M-RoPE, and deepstack features.

Deepstack adds the outputs of a few ViT layers to the hidden states *at the image positions* of the first decoder
layers (inside the language model's forward, not through attention), so the attention seam and the image mask are
the same as Qwen2-VL's. The ViT uses 16-pixel patches and a learned position grid. Its processor owns a video
processor (torchvision), so without torchvision its processor is assembled without it (`_image_only`).
"""

from __future__ import annotations

from typing import Any, Callable

from .base import TinySpec, register_family
from .qwen2_vl import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL, Qwen2VLAdapter, qwen_tokenizer


@register_family
class Qwen3VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen3_vl",)
    known_sink_dims = ()  # no published sink dims (Qwen2-VL's entry is for its own text model type)
    model_class_name = "Qwen3VLForConditionalGeneration"
    config_class_name = "Qwen3VLConfig"
    processor_class_name = "Qwen3VLProcessor"
    # Funnel / ViCrop: `image_grid` is Qwen2-VL's, read from `image_grid_thw` (counted in 16-pixel patches here):
    # (h / 2, w / 2) merged tokens of 32 pixels. No published anchor layer; the focal side keeps the Qwen-VL value
    # of SPEC §5 (224 px = 7 x 7 merged tokens here), ours for Qwen3-VL.
    fixed_focal_side = 224

    @classmethod
    def tiny_vision(cls, out_hidden: int) -> dict[str, Any]:
        return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=out_hidden,
                    patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                    deepstack_visual_indexes=[0, 1])

    @classmethod
    def tiny_spec(cls, tokenizer_factory: Callable[..., Any]) -> TinySpec:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tok = qwen_tokenizer(tokenizer_factory)
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=128 * 128, max_pixels=160 * 160, patch_size=16, merge_size=2, temporal_patch_size=2
        )
        processor = cls.assemble(image_processor, tok, QWEN_CHAT_TEMPLATE, {})
        ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
        text = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=len(tok),
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True,
                             "rope_theta": 10000.0},
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        config = Qwen3VLConfig(
            text_config=text,
            vision_config=cls.tiny_vision(text["hidden_size"]),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
        return TinySpec(config=config, processor=processor, model_class=Qwen3VLForConditionalGeneration)
