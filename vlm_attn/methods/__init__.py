"""The methods: one file per method, each a config dataclass, pure tensor functions and a small engine plug."""

from .var import VARConfig
from .heads import HeadSensitivity
from .pai import PAIConfig
from .paint import PAINTConfig

__all__ = ["HeadSensitivity", "PAIConfig", "PAINTConfig", "VARConfig"]
