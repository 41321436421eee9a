"""The methods: one file per method, each a config dataclass, pure tensor functions and a small engine plug."""

from .var import VARConfig

__all__ = ["VARConfig"]
