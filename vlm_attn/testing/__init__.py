"""Tiny random models of the real architectures for tests and the no-download demo (`--model tiny-<family>`).

`tiny` builds, caches and loads them; `recipes` holds each family's tiny config and processor. The family
adapters in `vlm_attn.patches` know nothing of them.
"""
