"""The HuggingFace `image-text-to-text` pipeline with vlm-attn methods applied.

A pipeline calls the model's unchanged `generate`, so `vlm_attn.apply(model, ...)` before building a pipeline is
all it takes. `steered_pipeline` does both in one call and keeps the handle on the pipeline.
"""

from __future__ import annotations

from typing import Any

from .api import Handle, apply


def steered_pipeline(model: Any, configs: Any, processor: Any = None, **pipeline_kwargs: Any) -> Any:
    """`pipeline("image-text-to-text")` over `model` (a loaded model, hub id or local dir) with `configs` applied.

    The returned pipeline carries the handle as `pipe.vlm_attn_handle` (call `.remove()` to restore the model; its
    `.report()` describes the latest call). Chat-message inputs work as with any pipeline:
    `pipe(text=[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": q}]}])`.
    """
    from transformers import pipeline

    if isinstance(model, str):
        from .loading import load_model

        model, loaded_processor = load_model(model)
        processor = processor or loaded_processor
    if processor is None:
        raise ValueError("steered_pipeline needs the model's processor when given a loaded model")
    handle: Handle = apply(model, configs)
    pipe = pipeline("image-text-to-text", model=model, processor=processor, **pipeline_kwargs)
    pipe.vlm_attn_handle = handle
    return pipe
