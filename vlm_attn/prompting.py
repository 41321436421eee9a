"""Turning images and a prompt into model inputs through the processor's own chat template."""

from __future__ import annotations

import os
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError


def load_image(image: str | os.PathLike | Image.Image) -> Image.Image:
    """An RGB PIL image (a new one: the caller's image is never touched) from a path or an image: greyscale,
    palette and RGBA are converted, transparent pixels composited over white, as the image processors and the
    input-level methods' crops do, so that every entry point sends the model the same pixels. The one image
    loader of the package (`vlm_attn.generation.load_rgb` is this function)."""
    from .methods.crops import to_rgb

    if isinstance(image, Image.Image):
        return to_rgb(image)
    path = os.fspath(image)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}. Pass a JPEG/PNG/WebP file or a PIL.Image.") from exc


def chat_prompt(processor: Any, text: str, num_images: int = 1) -> str:
    """The prompt string for one user turn with `num_images` image slots followed by `text`."""
    content: list[dict[str, str]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": text})
    messages = [{"role": "user", "content": content}]
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(
            f"{type(processor).__name__} has no chat template; pass a processor of an instruction-tuned checkpoint "
            "or set processor.chat_template"
        )
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def build_inputs(
    processor: Any,
    images: Sequence[Any],
    prompts: Sequence[str],
    images_per_prompt: int = 1,
) -> Any:
    """Batched, left-padded model inputs: one user turn per prompt, `images_per_prompt` images each (in order)."""
    if len(images) != len(prompts) * images_per_prompt:
        raise ValueError(
            f"got {len(images)} images for {len(prompts)} prompts with {images_per_prompt} image(s) each"
        )
    texts = [chat_prompt(processor, p, images_per_prompt) for p in prompts]
    pil = [load_image(im) for im in images]
    # One list per prompt, always: Gemma 3 and SmolVLM read a flat list as all images of a single prompt.
    pil = [pil[i : i + images_per_prompt] for i in range(0, len(pil), images_per_prompt)]
    tokenizer = processor.tokenizer
    previous = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return processor(images=pil, text=texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous
