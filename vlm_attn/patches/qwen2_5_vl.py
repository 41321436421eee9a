"""Qwen2.5-VL: Qwen2-VL's token layout with a windowed-attention ViT; same image tokens and M-RoPE."""

from __future__ import annotations

from typing import Any

from .base import register_family
from .qwen2_vl import Qwen2VLAdapter


@register_family
class Qwen25VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen2_5_vl",)
    known_sink_dims = ()  # no published sink dims (Qwen2-VL's entry is for its own text model type)
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    config_class_name = "Qwen2_5_VLConfig"
    processor_class_name = "Qwen2_5_VLProcessor"
    published_anchor_layers = {36: 22}  # Qwen2.5-VL-3B (SPEC §5)

    def _merged_order(self, grid_thw: Any) -> Any:
        """The ViT permutes merged groups into attention windows and un-permutes them after the merger."""
        import torch
        from transformers.vision_utils import get_vision_window_index

        vc = self.config.vision_config
        window_index, _ = get_vision_window_index(
            grid_thw, spatial_merge_size=vc.spatial_merge_size, window_size=vc.window_size, patch_size=vc.patch_size
        )
        return torch.argsort(window_index)
