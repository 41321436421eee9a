"""Qwen2.5-VL: Qwen2-VL's token layout with a windowed-attention ViT; same image tokens and M-RoPE."""

from __future__ import annotations

from typing import Any

from .base import register_family
from .qwen2_vl import Qwen2VLAdapter


@register_family
class Qwen25VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen2_5_vl",)
    known_sink_dims = {}
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    config_class_name = "Qwen2_5_VLConfig"

    @classmethod
    def tiny_vision(cls, out_hidden: int) -> dict[str, Any]:
        return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=out_hidden,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                    fullatt_block_indexes=[1])
