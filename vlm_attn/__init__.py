"""vlm-attn: training-free attention steering for HuggingFace vision-language models.

    handle = vlm_attn.apply(model, vlm_attn.VARConfig())
    out = model.generate(**inputs)
    handle.report(); handle.remove()
"""

from .api import Handle, apply, remove
from .methods import VARConfig
from .patches.base import UnsupportedModelError, supported_families

__version__ = "0.1.0"

__all__ = ["Handle", "VARConfig", "UnsupportedModelError", "apply", "remove", "supported_families", "__version__"]
