"""What a tiny model of each family is made of: its config, its real processor class, the weight scale to redraw.

One recipe function per family (in `vlm_attn.testing.families`), registered in `RECIPES` under the family's
`config.model_type`. The sizes the families share (a 4-layer, 64-wide text model with GQA; two-layer CLIP and
SigLIP towers) are the helpers below, so each recipe states only what its family changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class TinySpec:
    """How to build a tiny random model of a family: config, processor, and the weight scale to redraw with."""

    config: Any
    processor: Any
    model_class: type
    lm_std: float = 0.15
    other_std: float = 0.1


Recipe = Callable[[Callable[..., Any]], TinySpec]  # takes the tokenizer factory (`tiny.build_tokenizer`)


def tiny_text_config(vocab_size: int, **extra: Any) -> dict[str, Any]:
    """The text model every tiny family uses: 4 layers, width 64, 4 query heads over 2 KV heads (GQA)."""
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


def tiny_vision_config(**extra: Any) -> dict[str, Any]:
    """A two-layer vision tower of width 32 (4 heads); `extra` gives the family's image and patch size."""
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **extra)


def tiny_clip_config() -> dict[str, Any]:
    """A CLIP tower over 48-pixel images of 8-pixel patches (CLS + 6 x 6)."""
    return tiny_vision_config(image_size=48, patch_size=8, projection_dim=32)


def tiny_siglip_config(image_size: int = 48, patch_size: int = 8) -> dict[str, Any]:
    """A two-layer SigLIP vision tower (no pooling head, as the VLMs use it)."""
    return dict(model_type="siglip_vision_model", **tiny_vision_config(image_size=image_size, patch_size=patch_size),
                vision_use_head=False)


def recipes() -> dict[str, Recipe]:
    """Family name (`config.model_type`) -> its recipe."""
    from .families import gemma, idefics, internvl, llava, onevision, qwen

    return {
        "gemma3": gemma.gemma3,
        "idefics3": idefics.idefics3,
        "internvl": internvl.internvl,
        "llava": llava.llava,
        "llava_next": llava.llava_next,
        "llava_onevision": onevision.llava_onevision,
        "paligemma": gemma.paligemma,
        "qwen2_5_vl": qwen.qwen2_5_vl,
        "qwen2_vl": qwen.qwen2_vl,
        "qwen3_vl": qwen.qwen3_vl,
        "smolvlm": idefics.smolvlm,
    }


def save_processor(adapter_cls: type, processor: Any, path: str | Path) -> None:
    """Save a tiny model's processor: `save_pretrained`, or for families whose processor owns a video processor
    (torchvision) its parts in the checkpoint layout, as `save_pretrained` would write them, less the video part."""
    from ..patches._image_only import ImageOnlyProcessorFamily

    if not issubclass(adapter_cls, ImageOnlyProcessorFamily):
        processor.save_pretrained(path)
        return
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    Path(path, "chat_template.jinja").write_text(processor.chat_template)
    settings = {"processor_class": adapter_cls.processor_class_name, **adapter_cls.processor_settings(processor)}
    Path(path, "processor_config.json").write_text(json.dumps(settings, indent=2))


def load_processor(adapter_cls: type, path: str) -> Any:
    """Load the processor saved beside a tiny model, as a user's checkpoint of that family would load."""
    from transformers import AutoProcessor

    from ..patches._image_only import ImageOnlyProcessorFamily
    from ..patches.processors import load_processor as load_family_processor

    if issubclass(adapter_cls, ImageOnlyProcessorFamily):
        return load_family_processor(path)
    return AutoProcessor.from_pretrained(path)
