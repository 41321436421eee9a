"""The methods: one file per method, each a config dataclass, pure tensor functions and a small engine plug."""

from .var import VARConfig
from .heads import HeadSensitivity
from .pai import PAIConfig
from .paint import PAINTConfig
from .dola import DoLaConfig
from .only import ONLYConfig
from .vista import VISTAConfig

__all__ = ["DoLaConfig", "HeadSensitivity", "ONLYConfig", "PAIConfig", "PAINTConfig", "VARConfig", "VISTAConfig"]
