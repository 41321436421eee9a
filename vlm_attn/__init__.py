"""vlm-attn: training-free attention steering for HuggingFace vision-language models.

    handle = vlm_attn.apply(model, vlm_attn.VARConfig())
    out = vlm_attn.steered_generate(model, **inputs)   # model.generate + what the methods need (PAI/PAINT guidance)
    handle.report(); handle.remove()
"""

from .api import Handle, apply, remove, steered_generate
from .generation import GenerationResult, funnel_decide, generate, vicrop_decide
from .inspection import Inspection, LayerInspection, inspect_attention
from .methods.funnel import FunnelConfig
from .methods.vicrop import ViCropConfig
from .methods import DoLaConfig, HeadSensitivity, ONLYConfig, PAIConfig, PAINTConfig, VARConfig, VISTAConfig
from .methods.icd import ICDConfig
from .methods.m3id import M3IDConfig
from .methods.vcd import VCDConfig
from .patches.base import UnsupportedModelError, supported_families

__version__ = "0.1.0"

__all__ = [
    "DoLaConfig", "FunnelConfig", "GenerationResult", "Handle", "HeadSensitivity", "ICDConfig", "Inspection", "LayerInspection", "M3IDConfig", "ONLYConfig", "PAIConfig", "PAINTConfig", "UnsupportedModelError", "VARConfig", "VCDConfig", "VISTAConfig", "ViCropConfig", "apply",
    "funnel_decide", "generate", "inspect_attention", "remove", "steered_generate", "supported_families", "vicrop_decide", "__version__",
]
