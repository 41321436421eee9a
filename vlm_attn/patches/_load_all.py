"""Imports every family file so that each registers itself."""

from . import llava, llava_next, qwen2_5_vl, qwen2_vl  # noqa: F401
