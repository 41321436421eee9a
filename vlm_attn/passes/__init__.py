"""Passes: modules that run forward passes of a steered model (calibration, anchor capture, guidance, inspection).

They drive a model through the public engine API (:mod:`vlm_attn.engine.api`) and the family adapters; methods do
not import them.
"""
