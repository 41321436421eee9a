"""CHAIR and POPE as Hugging Face ``evaluate`` modules, loadable from their local folders.

``evaluate.load(evaluate_module_path("chair"))`` / ``evaluate.load(evaluate_module_path("pope"))``; the folders
hold one script each, as ``evaluate`` expects. They wrap ``vlm_attn.eval.chair`` and ``vlm_attn.eval.pope``.
"""

from __future__ import annotations

from pathlib import Path

MODULES: tuple[str, ...] = ("chair", "pope")


def evaluate_module_path(name: str) -> str:
    """Local folder of the ``evaluate`` module ``name`` ("chair" or "pope"), for ``evaluate.load``."""
    if name not in MODULES:
        raise ValueError(f"evaluate module must be one of {MODULES}, not {name!r}")
    return str(Path(__file__).resolve().parent / name)
