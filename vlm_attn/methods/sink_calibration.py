"""Deprecated path: this module moved to :mod:`vlm_attn.passes.sink_calibration` (it runs forward passes; it is not a method).

Importing it warns once; every name is looked up in the new module. Import from `vlm_attn.passes.sink_calibration`.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..passes import sink_calibration as _moved

warnings.warn(
    "vlm_attn.methods.sink_calibration is deprecated: import from vlm_attn.passes.sink_calibration",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
