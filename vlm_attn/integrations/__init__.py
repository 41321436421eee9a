"""Adapters that let other evaluation harnesses drive vlm-attn (each needs its own optional extra)."""
