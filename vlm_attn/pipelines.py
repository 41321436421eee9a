"""The HuggingFace `image-text-to-text` pipeline with vlm-attn methods applied.

A pipeline calls the model's unchanged `generate`, which runs the attention methods (they live in the model's
attention) but not the logits processors some methods need: PAI/PAINT's image-free guidance would be lost. So
`steered_pipeline` builds the pipeline from a small subclass, `SteeredImageTextToTextPipeline`, whose `_forward`
adds, for each batch it generates, the processors `Handle.generate_kwargs` gives for that batch's inputs: the same
ones, built the same way, as `vlm_attn.steered_generate` (a fresh guidance processor per generate call, on the
batch's own left-padded prompts; the image-free pass is never steered).
"""

from __future__ import annotations

import copy
from typing import Any

from transformers.pipelines.image_text_to_text import ImageTextToTextPipeline

from .api import Handle, apply


class SteeredImageTextToTextPipeline(ImageTextToTextPipeline):
    """The image-text-to-text pipeline with the vlm-attn handle's logits processors added to every generate call."""

    vlm_attn_handle: Handle | None = None

    def _forward(self, model_inputs: Any, generate_kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(generate_kwargs or {})
        handle = self.vlm_attn_handle
        if handle is not None and handle.active:  # after handle.remove() the model is plain, and so is the pipeline
            kwargs = handle.generate_kwargs(model_inputs, kwargs)
        return super()._forward(model_inputs, kwargs)


def _left_padded(processor: Any) -> Any:
    """`processor`, or a copy whose tokenizer pads on the left: the pipeline pads batches on the tokenizer's side,
    and right padding would put pad tokens between a prompt and its generated tokens (the caller's processor is
    left as it is)."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or tokenizer.padding_side == "left":
        return processor
    processor = copy.deepcopy(processor)
    processor.tokenizer.padding_side = "left"
    return processor


def steered_pipeline(model: Any, configs: Any, processor: Any = None, **pipeline_kwargs: Any) -> Any:
    """`pipeline("image-text-to-text")` over `model` (a loaded model, hub id or local dir) with `configs` applied.

    Every method runs as through `vlm_attn.steered_generate`, PAI/PAINT's image-free guidance included (pass your
    own processors as `generate_kwargs={"logits_processor": [...]}`: they are kept, guidance comes after them).
    Batches (`pipe(..., batch_size=n)`) are left-padded, so each sample gets the tokens it gets alone.
    The returned pipeline carries the handle as `pipe.vlm_attn_handle` (call `.remove()` to restore the model; its
    `.report()` describes the latest call). Chat-message inputs work as with any pipeline:
    `pipe(text=[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": q}]}])`.
    """
    from transformers import pipeline

    if "pipeline_class" in pipeline_kwargs:
        raise ValueError("steered_pipeline builds its own pipeline class: drop pipeline_class")
    if isinstance(model, str):
        from .loading import load_model

        model, loaded_processor = load_model(model)
        processor = processor or loaded_processor
    if processor is None:
        raise ValueError("steered_pipeline needs the model's processor when given a loaded model")
    processor = _left_padded(processor)
    handle: Handle = apply(model, configs, processor=processor)
    try:
        pipe = pipeline("image-text-to-text", model=model, processor=processor,
                        pipeline_class=SteeredImageTextToTextPipeline, **pipeline_kwargs)
    except Exception:
        handle.remove()  # do not leave the model patched when the pipeline cannot be built
        raise
    pipe.vlm_attn_handle = handle
    return pipe
