"""PAINT (arXiv 2501.12206): the public names of `vlm_attn.methods.paint`."""

from .selection import *  # noqa: F401,F403
from .selection import __all__  # noqa: F401
