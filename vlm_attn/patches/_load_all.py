"""Imports every family file so that each registers itself."""

from . import llava, llava_next, qwen2_5_vl, qwen2_vl  # noqa: F401
from . import gemma3, idefics3, internvl, llava_onevision, paligemma, qwen3_vl, smolvlm  # noqa: F401
