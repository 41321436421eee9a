"""Processors without their video processor, for families whose processor owns one (SPEC §1, torchvision notes).

Every video processor in transformers 5.2x needs torchvision, and `ProcessorMixin.__init__` refuses a missing
sub-processor, so on a machine without torchvision such a processor can be neither built nor loaded with
`AutoProcessor`. Image and text calls never touch the video processor: an instance assembled with the attributes
the class's own `__init__` would set works for them. Its parts are saved separately (tokenizer, image processor,
chat template, the processor's own settings) and re-assembled on load, after trying `AutoProcessor` first (which
works where torchvision is installed).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .base import FamilyAdapter

SETTINGS_FILE = "vlm_attn_processor.json"


def assemble_processor(
    processor_class: type, image_processor: Any, tokenizer: Any, chat_template: str, **attributes: Any
) -> Any:
    """An instance of `processor_class` with no video processor, holding the given parts and attributes."""
    proc = processor_class.__new__(processor_class)
    proc.chat_template = chat_template
    proc.image_processor = image_processor
    proc.tokenizer = tokenizer
    proc.video_processor = None
    for name, value in attributes.items():
        setattr(proc, name, value)
    return proc


class ImageOnlyProcessorFamily(FamilyAdapter):
    """Save/load of a tiny model's processor through its parts; subclasses name the class and its token attributes.

    `processor_class_name` is the transformers processor class; `processor_settings` lists its own (JSON) settings
    to keep; `token_attributes` the attributes its `__init__` derives from the tokenizer. `assemble` rebuilds the
    processor from the parts, both at build time and on load.
    """

    processor_class_name: str  # every subclass sets it

    @classmethod
    def processor_settings(cls, processor: Any) -> dict[str, Any]:
        """The processor's own settings (not its sub-processors) needed to assemble it again."""
        return {}

    @classmethod
    def token_attributes(cls, tokenizer: Any) -> dict[str, Any]:
        """The attributes the processor's `__init__` would read off the tokenizer (special tokens and their ids)."""
        return {}

    @classmethod
    def assemble(cls, image_processor: Any, tokenizer: Any, chat_template: str, settings: dict[str, Any]) -> Any:
        """The image-only processor from its parts."""
        import transformers

        return assemble_processor(
            getattr(transformers, cls.processor_class_name), image_processor, tokenizer, chat_template,
            **cls.token_attributes(tokenizer), **settings,
        )

    @classmethod
    def save_tiny_processor(cls, processor: Any, path: Any) -> None:
        processor.tokenizer.save_pretrained(path)
        processor.image_processor.save_pretrained(path)
        Path(path, "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}))
        Path(path, SETTINGS_FILE).write_text(json.dumps(cls.processor_settings(processor), indent=2))

    @classmethod
    def load_tiny_processor(cls, path: str) -> Any:
        from transformers import AutoImageProcessor, AutoTokenizer

        settings = json.loads(Path(path, SETTINGS_FILE).read_text())
        from transformers import AutoProcessor

        # The full processor where torchvision is installed; the image-only one otherwise.
        with contextlib.suppress(ImportError, AttributeError, OSError, ValueError, TypeError):
            processor = AutoProcessor.from_pretrained(path, **settings)
            if getattr(processor, "video_processor", None) is not None:
                return processor
        template = json.loads(Path(path, "chat_template.json").read_text())["chat_template"]
        return cls.assemble(
            AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path), template, settings
        )
