"""Qwen3-VL: Qwen2-VL's `<|image_pad|>` layout and `mm_token_type_ids`, interleaved M-RoPE, and deepstack features.

Deepstack adds the outputs of a few ViT layers to the hidden states *at the image positions* of the first decoder
layers (inside the language model's forward, not through attention), so the attention seam and the image mask are
the same as Qwen2-VL's. The ViT uses 16-pixel patches and a learned position grid. Its processor owns a video
processor (torchvision), so without torchvision its processor is assembled without it (`_image_only`).
"""

from __future__ import annotations


from .base import register_family
from .qwen2_vl import Qwen2VLAdapter


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
