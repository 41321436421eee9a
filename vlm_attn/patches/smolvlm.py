"""SmolVLM: Idefics3's architecture and image layout (tiles wrapped in `<fake_token_around_image>` and
`<row_i_col_j>`, then `<global-img>`); only the `<image>` tokens are image positions.

Its processor owns a video processor (torchvision) and its `__init__` also requires the `num2words` package, which
is used only to write video prompts; where either is missing the processor is assembled without both (see
`_image_only`), with the attributes its `__init__` sets (tokenizer attributes, else the class defaults).
`SmolVLMProcessor.apply_chat_template` reads the frame count and fps from the video processor even for image-only
turns, so a small stand-in carries those two numbers. (SmolVLM v1 checkpoints, e.g. SmolVLM-256M-Instruct, are
`idefics3` with an Idefics3Processor, which owns no video processor.)
"""

from __future__ import annotations

from typing import Any

from ._image_only import ImageOnlyProcessorFamily
from .base import register_family
from .idefics3 import (
    Idefics3Adapter,
)


class VideoSamplingDefaults(dict):
    """What `SmolVLMProcessor.apply_chat_template` reads from its video processor (SmolVLM's shipped values).

    A dict, so that the processor's `repr` / `to_dict` can serialise it like any setting.
    """

    def __init__(self, num_frames: int = 64, fps: int = 1):
        super().__init__(num_frames=num_frames, fps=fps)

    @property
    def num_frames(self) -> int:
        return self["num_frames"]

    @property
    def fps(self) -> int:
        return self["fps"]


@register_family
class SmolVLMAdapter(ImageOnlyProcessorFamily, Idefics3Adapter):
    model_types = ("smolvlm",)
    processor_class_name = "SmolVLMProcessor"
    optional_packages = ("torchvision", "num2words")

    @classmethod
    def processor_settings(cls, processor: Any) -> dict[str, Any]:
        return {"image_seq_len": processor.image_seq_len}

    @classmethod
    def assemble(cls, image_processor: Any, tokenizer: Any, chat_template: Any, settings: dict[str, Any]) -> Any:
        """`SmolVLMProcessor.__init__` refuses to run without num2words: its attributes are set here, as it would set
        them, and a stand-in carries the video sampling defaults its chat template reads."""
        from transformers import SmolVLMProcessor

        proc = SmolVLMProcessor.__new__(SmolVLMProcessor)
        proc.chat_template = chat_template
        proc.image_processor, proc.tokenizer = image_processor, tokenizer
        proc.video_processor = VideoSamplingDefaults()
        for name, default in (("fake_image_token", "<fake_token_around_image>"), ("image_token", "<image>"),
                              ("end_of_utterance_token", "<end_of_utterance>"), ("global_image_token", "<global-img>"),
                              ("video_token", "<video>")):
            setattr(proc, name, getattr(tokenizer, name, default))
        proc.image_token_id = tokenizer.convert_tokens_to_ids(proc.image_token)
        proc.image_seq_len = settings.get("image_seq_len", 169)
        return proc
