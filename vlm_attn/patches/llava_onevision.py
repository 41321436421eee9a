"""LLaVA-OneVision: SigLIP + projector + Qwen2 language model, anyres tiling like LLaVA-NeXT.

The base image, the tiles (unpadded) and the row-newline features all sit on `<image>` tokens, so the default image
mask (token id match) covers them. Its processor owns a video processor (torchvision), so the tiny model's processor
is assembled without it (see `_image_only`).
"""

from __future__ import annotations

from typing import Any, Callable

from ._image_only import ImageOnlyProcessorFamily, assemble_processor
from .base import ImageGrid, TinySpec, register_family
from .llava import tiny_text_config

TINY_PINPOINTS = [[48, 48], [48, 96], [96, 48], [96, 96]]
ONEVISION_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ONEVISION_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


def tiny_siglip_config(image_size: int = 48, patch_size: int = 8) -> dict[str, Any]:
    """A two-layer SigLIP vision tower (no pooling head, as the VLMs use it)."""
    return dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
    )


@register_family
class LlavaOnevisionAdapter(ImageOnlyProcessorFamily):
    model_types = ("llava_onevision",)

    def image_grid(self, inputs: Any, image_index: int = 0) -> ImageGrid:
        """The base (whole-image) grid of SigLIP patches, side = image_size // patch_size (27 x 27 at 384 / 14).

        A prompt with one image gets anyres: the base grid leads the image's tokens, then the unpadded tiles and
        their row newlines, so only that image is located. A prompt with several images (the Funnel's answer turn)
        gets the base grid plus one newline token per image, so image i starts at i * (side^2 + 1). Only the
        "full" feature selection keeps a square base grid (SigLIP has no CLS; "default" drops a real patch).
        """
        from ._grids import check_index, prompt_ids

        if getattr(self.config, "vision_feature_select_strategy", "full") != "full":
            raise ValueError(
                "llava_onevision: the image grid is known for vision_feature_select_strategy='full' only (the "
                "released checkpoints' setting); 'default' drops the first SigLIP patch"
            )
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        prompt_ids(inputs)
        counts = inputs.get("batch_num_images")
        count = int(counts[0]) if counts is not None else 1
        check_index(image_index, count, "llava_onevision")
        return ImageGrid(start=image_index * (side * side + 1) if count > 1 else 0, shape=(side, side))

    @classmethod
    def processor_settings(cls, processor: Any) -> dict[str, Any]:
        return {
            "num_image_tokens": processor.num_image_tokens,
            "vision_feature_select_strategy": processor.vision_feature_select_strategy,
            "vision_aspect_ratio": processor.vision_aspect_ratio,
        }

    @classmethod
    def assemble(cls, image_processor: Any, tokenizer: Any, chat_template: str, settings: dict[str, Any]) -> Any:
        from transformers import LlavaOnevisionProcessor

        return assemble_processor(
            LlavaOnevisionProcessor,
            image_processor,
            tokenizer,
            chat_template,
            image_token=tokenizer.image_token,
            video_token=tokenizer.video_token,
            image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
            video_token_id=tokenizer.convert_tokens_to_ids(tokenizer.video_token),
            **settings,
        )

    @classmethod
    def tiny_spec(cls, tokenizer_factory: Callable[..., Any]) -> TinySpec:
        from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        tok = tokenizer_factory(
            ONEVISION_SPECIAL,
            {"image_token": "<image>", "video_token": "<video>"},
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
        )
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": 48, "width": 48}, image_grid_pinpoints=TINY_PINPOINTS
        )
        settings = {
            "num_image_tokens": 36,  # (48 / 8) ** 2 patches of the base image, no CLS (SigLIP)
            "vision_feature_select_strategy": "full",
            "vision_aspect_ratio": "anyres_max_9",
        }
        processor = cls.assemble(image_processor, tok, ONEVISION_CHAT_TEMPLATE, settings)
        config = LlavaOnevisionConfig(
            vision_config=tiny_siglip_config(),
            text_config={"model_type": "qwen2", **tiny_text_config(len(tok))},
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            video_token_index=tok.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=TINY_PINPOINTS,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9",
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        return TinySpec(config=config, processor=processor, model_class=LlavaOnevisionForConditionalGeneration)
