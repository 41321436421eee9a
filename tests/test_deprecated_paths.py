"""Old import paths that moved keep working, with a DeprecationWarning that names the new path."""

from __future__ import annotations

import importlib
import sys

import pytest

MOVED = {
    "vlm_attn.methods.sink_calibration": ("vlm_attn.passes.sink_calibration", "calibrate_sinks"),
    "vlm_attn.methods.head_calibration": ("vlm_attn.passes.head_calibration", "calibrate_heads"),
    "vlm_attn.methods.guidance": ("vlm_attn.passes.guidance", "ImageFreeGuidance"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_warns_and_gives_the_same_object(old):
    new, name = MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
