"""Per-family knowledge: one file per model family, registered by `config.model_type`."""

from .base import FamilyAdapter, UnsupportedModelError, get_adapter, register_family, supported_families

__all__ = ["FamilyAdapter", "UnsupportedModelError", "get_adapter", "register_family", "supported_families"]
