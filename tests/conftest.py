"""Shared fixtures: tiny random models of the real architectures, built once per session, loaded per test."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_attn.testing.tiny import load_tiny, tiny_path

CORE_FAMILIES = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl"]
# The shared reference data sits beside the checkout; VLM_ATTN_SHARED points elsewhere (e.g. from a git worktree).
SHARED = Path(os.environ.get("VLM_ATTN_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
# The nltk data of CHAIR's reference path (punkt_tab, the perceptron tagger, WordNet 3.0) ships in shared/: point
# nltk at it (before anything imports nltk) so the tests exercise that path too; an NLTK_DATA already set wins.
if "NLTK_DATA" not in os.environ and (SHARED / "data" / "nltk_data").is_dir():
    os.environ["NLTK_DATA"] = str(SHARED / "data" / "nltk_data")

logging.getLogger("transformers").setLevel(logging.ERROR)
# Tiny models need no intra-op parallelism; on shared, busy cores the spinning OpenMP threads turned a 4 ms forward
# into ~1.7 s. One thread makes the suite many times faster (results are deterministic either way).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder holding every tiny model built in this session (built lazily, each once)."""
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture
def load(tiny_cache: Path):
    """load(family) -> (model, processor), freshly loaded through from_pretrained."""

    def _load(family: str):
        tiny_path(family, tiny_cache)
        model, processor = load_tiny(family, tiny_cache)
        torch.manual_seed(0)
        return model, processor

    return _load


def make_image(seed: int = 0, size: tuple[int, int] = (80, 60)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8"))


@pytest.fixture
def image() -> Image.Image:
    return make_image(0)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED} (it sits beside the checkout in CI)")
    return SHARED
