"""Tiny random models of the real architectures, built offline, for tests and for the no-download demo.

A tiny model is made from its family's config with real processor classes and a small BPE tokenizer trained here,
its weights redrawn from a seed with a larger std (transformers' 0.02 init makes attention nearly uniform, so
methods would barely move anything, SPEC §1), saved with `save_pretrained`, and loaded back through the same
`from_pretrained` path users take. They demonstrate the machinery, not quality: their text is noise.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny-"
_RECIPE_VERSION = "4"
_CORPUS = (
    "a an the this that there is are of in on at to and with near next under above behind left right "
    "photo image picture scene describe detail details what where which how many color answer question using single "
    "word phrase should look please yes no . , ? ! ' : "
    "person man woman people child car bus truck bicycle motorcycle traffic light stop sign bench bird cat dog horse "
    "sheep cow elephant bear zebra giraffe umbrella handbag tie suitcase frisbee skis kite ball bottle cup fork knife "
    "spoon bowl banana apple sandwich orange pizza cake chair couch bed table toilet tv laptop phone book clock vase "
    "tree sky road street grass water building red green blue yellow black white small large two three "
    "standing sitting riding holding walking parked user assistant system"
)


def build_tokenizer(special_tokens: list[str], named: dict[str, str], **kwargs: Any):
    """A word-level tokenizer over a small built-in vocabulary (no download; random generations read as words).

    `named` maps attribute names (image_token, ...) to special-token strings so processors find them. Words outside
    the vocabulary become `<unk>`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(_CORPUS.split()))
    vocab = {tok: i for i, tok in enumerate([*special_tokens, "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(special_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", extra_special_tokens=named, **kwargs)


def _redraw(model: torch.nn.Module, language_model: torch.nn.Module, lm_std: float, other_std: float, seed: int):
    """Redraw every weight matrix from N(0, std) with a fixed seed; norms stay at 1 and biases at 0."""
    gen = torch.Generator().manual_seed(seed)
    lm_params = {id(p) for p in language_model.parameters()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim < 2:
                continue
            std = lm_std if id(param) in lm_params else other_std
            param.copy_(torch.randn(param.shape, generator=gen) * std)
        for name, param in model.named_parameters():
            # Gemma 3's fresh config zero-initialises this projection weight (SPEC §1).
            if "mm_input_projection_weight" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * other_std)


def tiny_families() -> list[str]:
    """Family names that have a tiny recipe (use as `tiny-<family>`)."""
    from .recipes import recipes

    return sorted(recipes())


def default_cache_dir() -> Path:
    root = os.environ.get("VLM_ATTN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vlm_attn")
    return Path(root) / "tiny"


def build_tiny(family: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build and save a tiny random model (weights + processor) of `family` into `out_dir`."""
    from ..patches import _load_all  # noqa: F401
    from ..patches.base import _FAMILIES, UnsupportedModelError

    if family not in tiny_families():
        raise UnsupportedModelError(f"no tiny model for {family!r}; available: {', '.join(tiny_families())}")
    from .recipes import recipes, save_processor

    adapter_cls = _FAMILIES[family]
    spec = recipes()[family](build_tokenizer)
    torch.manual_seed(seed)
    model = spec.model_class(spec.config).eval()
    adapter = adapter_cls(model)
    _redraw(model, adapter.language_model(), spec.lm_std, spec.other_std, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_processor(adapter_cls, spec.processor, out)
    _write_demo_settings(model, spec.processor, out)
    (out / "VLM_ATTN_TINY").write_text(f"{family} recipe {_RECIPE_VERSION} seed {seed}\n")
    return out


def _write_demo_settings(model: torch.nn.Module, processor: Any, out: Path) -> None:
    """Sink dims and tau for VAR demos on random weights (they peak at |x_d|/RMS ~ 3-4, far below tau = 20).

    The highest threshold at which calibration finds dims *and* VAR then finds visual sinks and redistributes on
    the sample image is kept, so `vlm-attn generate --model tiny-<family> --method var` shows the machinery acting.
    """
    from PIL import Image

    from ..api import apply
    from ..resources import DEMO_FILE, sample_image_path
    from ..passes.sink_calibration import calibrate_sinks
    from ..methods.var import VARConfig
    from ..prompting import build_inputs

    image = Image.open(sample_image_path()).convert("RGB")
    batch = build_inputs(processor, [image], ["Please describe this image in detail."])
    for tau in (4.0, 3.5, 3.0, 2.5, 2.0, 1.5):
        try:
            found = calibrate_sinks(model, processor, [image], threshold=tau, max_token_fraction=0.2)
        except ValueError:
            continue
        dims = found.sink_dims[:4]
        with apply(model, VARConfig(sink_dims=tuple(dims), tau=tau)) as handle, torch.no_grad():
            model(**batch)
            report = handle.report()["var"]
        if report.get("active") and report["total_heads_redistributed"] > 0:
            demo = {"sink_dims": dims, "tau": tau, "note": "demo of the machinery on random weights"}
            (out / DEMO_FILE).write_text(json.dumps(demo, indent=2))
            return
    logger.warning("no demo VAR settings found for the tiny model in %s", out)


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Directory of the tiny model `name` ('tiny-llava' or 'llava'), building it on first use."""
    family = name[len(TINY_PREFIX) :] if name.startswith(TINY_PREFIX) else name
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"{family}-r{_RECIPE_VERSION}-s{seed}"
    if not (path / "VLM_ATTN_TINY").exists():
        logger.info("building tiny %s model in %s", family, path)
        build_tiny(family, path, seed=seed)
    return path


def load_tiny(name: str, cache_dir: str | os.PathLike | None = None, seed: int = 0) -> tuple[Any, Any]:
    """(model, processor) of a tiny model, loaded through `from_pretrained` like any checkpoint."""
    from transformers import AutoModelForImageTextToText

    from ..patches import _load_all  # noqa: F401
    from ..patches.base import _FAMILIES
    from .recipes import load_processor

    path = tiny_path(name, cache_dir, seed)
    family = (path / "VLM_ATTN_TINY").read_text().split()[0]
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = load_processor(_FAMILIES[family], str(path))
    return model, processor
