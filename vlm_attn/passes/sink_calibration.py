"""Discovering VAR's sink dimensions for a model that is not in the known table (SPEC §2.1, our recipe).

Massive activations sit in a few fixed hidden dimensions: for a handful of tokens (BOS, some delimiters, some image
patches) |x_d| / RMS(x) is huge in those dims, in most layers from layer 2 on. We run one forward on a calibration
prompt, and keep the dims that are extreme (ratio > threshold for at most a few tokens) in at least
`min_layer_fraction` of the layers 2 .. L-1 (the hidden states entering those layers, which is where VAR looks; the
final norm's output is no layer's input). The forward stops at the last layer's input: no LM head is computed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..methods.var import activation_ratio

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Please describe this image in detail."


@dataclass
class SinkCalibration:
    """The discovered sink dims with the evidence for each and the recipe that found them."""

    sink_dims: list[int]
    layer_fraction: dict[int, float]  # dim -> fraction of layers >= 2 in which it is extreme
    peak_ratio: dict[int, float]  # dim -> largest |x_d| / RMS(x) seen
    threshold: float
    model: str
    hidden_size: int
    recipe: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(asdict(self), indent=2))
        return p


def extreme_dims(
    hidden_states: Sequence[torch.Tensor],
    threshold: float,
    min_layer_fraction: float = 0.5,
    max_token_fraction: float = 0.05,
    first_layer: int = 2,
) -> tuple[list[int], dict[int, float], dict[int, float]]:
    """Dims whose |x_d|/RMS(x) exceeds `threshold` for a few tokens in enough layers.

    `hidden_states[l]` is the (B, T, D) input of layer l. A dim is extreme in a layer when its peak ratio exceeds
    the threshold and at most max(1, max_token_fraction * tokens) tokens do. Returns (dims sorted by peak ratio,
    per-dim layer fraction, per-dim peak ratio).
    """
    layers = list(hidden_states[first_layer:])
    if not layers:
        raise ValueError(f"need more than {first_layer} layers to calibrate sink dims")
    hits = None
    peaks = None
    for x in layers:
        x = x.float().flatten(0, 1)  # (tokens, D)
        ratio = activation_ratio(x)
        over = (ratio > threshold).sum(0)
        allowed = max(1, int(max_token_fraction * x.shape[0]))
        extreme = (over >= 1) & (over <= allowed)
        hits = extreme.long() if hits is None else hits + extreme.long()
        peak = ratio.amax(0)
        peaks = peak if peaks is None else torch.maximum(peaks, peak)
    fraction = hits.float() / len(layers)
    chosen = torch.nonzero(fraction >= min_layer_fraction).flatten().tolist()
    chosen.sort(key=lambda d: -float(peaks[d]))
    return chosen, {d: float(fraction[d]) for d in chosen}, {d: float(peaks[d]) for d in chosen}


class _LastInputSeen(Exception):
    """Raised by the hook on the last decoder layer: every input the calibration needs has been captured."""


def layer_inputs(model: torch.nn.Module, batch: Any, first_layer: int = 2) -> list[torch.Tensor]:
    """The hidden states entering decoder layers first_layer .. L-1 of the language model, one (B, T, D) each.

    Read by forward pre-hooks on the layers; the forward stops at the last layer's input, so neither that layer, the
    final norm (whose output is no layer's input) nor the LM head (full-vocabulary logits) is computed.
    """
    from ..patches import get_adapter

    layers = get_adapter(model).decoder_layers()
    if len(layers) <= first_layer:
        raise ValueError(f"need more than {first_layer} layers to calibrate sink dims, the model has {len(layers)}")
    captured: list[torch.Tensor] = []

    def grab(idx: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            if idx == len(layers) - 1:
                raise _LastInputSeen

        return hook

    handles = [layers[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in range(first_layer, len(layers))]
    try:
        with torch.no_grad(), contextlib.suppress(_LastInputSeen):
            model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != len(layers) - first_layer:
        raise RuntimeError(f"the forward reached {len(captured)} of the {len(layers) - first_layer} decoder layers")
    return captured


@torch.no_grad()
def calibrate_sinks(
    model: torch.nn.Module,
    processor: Any,
    images: Sequence[Any],
    prompt: str = DEFAULT_PROMPT,
    threshold: float = 20.0,
    min_layer_fraction: float = 0.5,
    max_token_fraction: float = 0.05,
) -> SinkCalibration:
    """Find the sink dims of `model` from forwards on `images` with `prompt`; raises when none stand out."""
    from ..prompting import build_inputs

    if not images:
        raise ValueError("calibrate_sinks needs at least one image")
    device = next(model.parameters()).device
    batch = build_inputs(processor, list(images), [prompt] * len(images)).to(device)
    mask = batch["attention_mask"].bool()
    states = [h[mask][None] for h in layer_inputs(model, batch)]  # drop padding positions
    dims, fraction, peak = extreme_dims(states, threshold, min_layer_fraction, max_token_fraction, first_layer=0)
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    hidden_size = model.config.get_text_config().hidden_size
    if not dims:
        raise ValueError(
            f"no hidden dimension of {name!r} shows massive activations above {threshold} in "
            f"{min_layer_fraction:.0%} of its layers; the model may have no attention sinks (random weights have "
            "none). Lower --threshold, or pass sink dims explicitly."
        )
    logger.info("sink dims of %s: %s", name, dims)
    recipe = {
        "prompt": prompt,
        "images": len(images),
        "min_layer_fraction": min_layer_fraction,
        "max_token_fraction": max_token_fraction,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return SinkCalibration(dims, fraction, peak, threshold, name, hidden_size, recipe)
