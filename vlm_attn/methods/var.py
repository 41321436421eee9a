"""VAR — Visual Attention Redistribution ("See What You Are Told", ICLR 2025), SPEC §2.

Attention sinks are tokens whose hidden state has a massive activation in a few fixed "sink dimensions". In
image-centric heads (much attention on the image, most of it on non-sink image tokens) VAR takes a fraction p of
the attention that sink tokens receive and gives it to the non-sink image tokens in proportion to their weights.

Conventions: `p` is the fraction *moved* (paper: 0.6) and `rho` the required visual non-sink share (paper: 0.5 for
hallucination tasks, 0.8 general, 0.9 vision-centric). The official code stores the kept fraction 1 - p and
1 - rho instead; `VARConfig.from_official` converts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.method import AttentionMethod, CallState, LayerView, RowSet
from .registry import register_method

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- config
@dataclass
class VARConfig:
    """Settings of VAR. Defaults reproduce the paper's hallucination setting."""

    p: float = 0.6  # fraction of sink attention moved to visual non-sink tokens
    rho: float = 0.5  # minimum share of image attention on non-sink image tokens for a head to be image-centric
    tau: float = 20.0  # sink threshold on phi(x) = max_{d in D_sink} |x_d| / RMS(x)
    image_mass: float = 0.2  # minimum attention mass on the image for a head to be image-centric
    sink_dims: tuple[int, ...] | str | None = None  # dims, a calibration JSON path, or None (known table)
    layers: tuple[int, ...] | None = None  # None: 2 .. L-1
    exclude_last_layer: bool = False  # the official release's (dead) option to skip layer L-1
    name: str = field(default="var", init=False, repr=False)

    def __post_init__(self) -> None:
        _in_range("p", self.p, 0.0, 1.0)
        _in_range("rho", self.rho, 0.0, 1.0)
        _in_range("image_mass", self.image_mass, 0.0, 1.0, low_open=True)
        if not self.tau > 0:
            raise ValueError(f"VARConfig.tau must be > 0 (paper: 20), got {self.tau}")
        if isinstance(self.sink_dims, (list, tuple)):
            dims = tuple(int(d) for d in self.sink_dims)
            if not dims or min(dims) < 0:
                raise ValueError(f"VARConfig.sink_dims must be non-negative hidden dims, got {self.sink_dims}")
            self.sink_dims = dims
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)
            if any(x < 0 for x in self.layers):
                raise ValueError(f"VARConfig.layers must be non-negative layer indices, got {self.layers}")

    @classmethod
    def from_official(cls, kept_fraction: float = 0.6, one_minus_rho: float = 0.5, **kwargs: Any) -> "VARConfig":
        """Build from the official code's conventions (it stores the kept fraction and 1 - rho)."""
        return cls(p=1.0 - kept_fraction, rho=1.0 - one_minus_rho, **kwargs)

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            bad = [x for x in self.layers if x >= num_layers]
            if bad:
                raise ValueError(f"VARConfig.layers {bad} out of range for a {num_layers}-layer language model")
            return self.layers
        last = num_layers - 1 if self.exclude_last_layer else num_layers
        return tuple(range(2, last))


def _in_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"VARConfig.{name} must lie in {bracket}{low}, {high}], got {value}")


# ------------------------------------------------------------------------------------------- math
def sink_scores(
    hidden: torch.Tensor, sink_dims: tuple[int, ...] | torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """phi(x) = max_{d in D_sink} |x_d| / RMS(x) per token: (B, T, D) -> (B, T), in fp32, weight-free RMS.

    `sink_dims` may be a tuple or a ready index tensor on the hidden state's device (the hot path passes one).
    """
    x = hidden.float()
    rms = torch.sqrt(x.pow(2).mean(dim=-1) + eps)
    dims = sink_dims if isinstance(sink_dims, torch.Tensor) else torch.tensor(sink_dims, device=x.device)
    return x.index_select(-1, dims).abs().amax(dim=-1) / rms


def column_sums(probs: torch.Tensor, *columns: torch.Tensor) -> torch.Tensor:
    """Attention mass of each row on each key set, in one matmul: (B, H, R, K) x n * (B, K) -> (B, H, R, n)."""
    sets = torch.stack(columns, dim=-1).to(probs.dtype)  # (B, K, n)
    return probs @ sets[:, None]


def image_centric(
    probs: torch.Tensor, image_cols: torch.Tensor, sink_cols: torch.Tensor, image_mass: float, rho: float
) -> torch.Tensor:
    """(B, H, R) bool: rows whose image mass >= image_mass and whose non-sink share of it >= rho.

    probs (B, H, R, K); image_cols and sink_cols (B, K) bool.
    """
    sums = column_sums(probs, image_cols, image_cols & ~sink_cols)
    return _is_image_centric(sums[..., 0], sums[..., 1], image_mass, rho)


def _is_image_centric(mass: torch.Tensor, non_sink: torch.Tensor, image_mass: float, rho: float) -> torch.Tensor:
    return (mass >= image_mass) & (non_sink >= rho * mass) & (non_sink > 0)


def redistribute(
    probs: torch.Tensor, image_cols: torch.Tensor, sink_cols: torch.Tensor, p: float, selected: torch.Tensor
) -> torch.Tensor:
    """Move fraction p of the sink keys' weight onto visual non-sink keys, in proportion, in selected rows.

    Sink keys (text and visual) keep (1 - p) of their weight; the removed mass is added to each visual non-sink key
    j as Omega * a_j / sum_{visual non-sink} a. Row sums are preserved. Unselected rows are returned unchanged.
    """
    vis_ns = image_cols & ~sink_cols
    sums = column_sums(probs, sink_cols, vis_ns)
    return _redistribute(probs, sink_cols, vis_ns, sums[..., 0], sums[..., 1], p, selected)


def _redistribute(
    probs: torch.Tensor,
    sink_cols: torch.Tensor,
    vis_ns: torch.Tensor,
    sink_mass: torch.Tensor,
    non_sink: torch.Tensor,
    p: float,
    selected: torch.Tensor,
) -> torch.Tensor:
    # One multiplicative factor per (row, key): 1 - p on sinks, 1 + Omega / non_sink on visual non-sinks, 1 elsewhere.
    gain = (p * sink_mass / non_sink.clamp_min(torch.finfo(probs.dtype).tiny))[..., None]
    factor = torch.where(sink_cols[:, None, None, :], 1.0 - p, 1.0) + vis_ns[:, None, None, :] * gain
    return torch.where(selected[..., None], probs * factor, probs)


def var_step(
    probs: torch.Tensor, image_cols: torch.Tensor, sink_cols: torch.Tensor, config: VARConfig, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head selection and redistribution sharing one pass of column sums; rows (B, R) limits the selection."""
    vis_ns = image_cols & ~sink_cols
    sums = column_sums(probs, image_cols, vis_ns, sink_cols)
    selected = _is_image_centric(sums[..., 0], sums[..., 1], config.image_mass, config.rho) & rows[:, None, :]
    return _redistribute(probs, sink_cols, vis_ns, sums[..., 2], sums[..., 1], config.p, selected), selected


def load_sink_dims(path: str | Path) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Sink dims from a calibration JSON written by `calibrate_sinks` (dims, and the record for checks)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sink-dims file {p} does not exist: run `vlm-attn calibrate-sinks --model ... --out {p}`")
    record = json.loads(p.read_text())
    return tuple(int(d) for d in record["sink_dims"]), record


# ------------------------------------------------------------------------------------------- engine plug
@register_method(VARConfig)
class VARMethod(AttentionMethod):
    """Plugs the VAR math into the engine: sinks from layer inputs, redistribution after softmax.

    Sinks are found over all prompt tokens at prefill and kept; each decoded token is tested as it arrives, so a
    cached generation and a no-cache recomputation see the same sink set.
    """

    wants_layer_inputs = True

    def __init__(self, config: VARConfig):
        self.config = config
        self.name = config.name
        self.sink_dims: tuple[int, ...] = ()
        self._dims_on: dict[torch.device, torch.Tensor] = {}  # sink dims as an index tensor, per device
        self.layers: frozenset[int] = frozenset()

    def bind(self, model: Any, adapter: Any, num_layers: int) -> None:
        hidden = adapter.text_config().hidden_size
        dims = self.config.sink_dims
        if isinstance(dims, (str, Path)):
            dims, record = load_sink_dims(dims)
            if record.get("hidden_size") not in (None, hidden):
                raise ValueError(
                    f"sink dims in {self.config.sink_dims} were calibrated on hidden size {record['hidden_size']} "
                    f"({record.get('model')}), but this model has {hidden}: recalibrate for this model"
                )
        elif dims is None:
            dims = adapter.lookup_sink_dims()
            if dims is None:
                name = getattr(model.config, "_name_or_path", "") or type(model).__name__
                raise ValueError(
                    f"VAR needs the sink dimensions of {name!r}, which are not in the known table. Pass them with "
                    "VARConfig(sink_dims=(...)) or discover them: `vlm-attn calibrate-sinks --model ... --out "
                    "sinks.json` (or vlm_attn.calibrate_sinks) and pass VARConfig(sink_dims='sinks.json')."
                )
        if max(dims) >= hidden:
            raise ValueError(f"VARConfig.sink_dims {dims} out of range for hidden size {hidden}")
        self.sink_dims = tuple(dims)
        self.layers = frozenset(self.config.resolve_layers(num_layers))
        self.num_layers = num_layers

    # --- sinks of every layer in scope: all tokens at prefill, then each new token as it is decoded
    def observe_layer_input(self, call: CallState, layer_idx: int, hidden: torch.Tensor) -> None:
        if layer_idx not in self.layers or self.config.p == 0:
            return
        dims = self._dims_on.get(hidden.device)
        if dims is None:
            dims = self._dims_on[hidden.device] = torch.tensor(self.sink_dims, device=hidden.device)
        sinks = sink_scores(hidden, dims) > self.config.tau
        if self.name not in call.store:
            call.store[self.name] = {"sinks": {}, "has_visual": {}}
            call.report[self.name] = _empty_report(self.num_layers, hidden.device)
        store, counts = call.store[self.name], call.report[self.name]
        if call.prefill or layer_idx not in store["sinks"]:
            store["sinks"][layer_idx] = sinks
            store["has_visual"][layer_idx] = (sinks & call.image_mask).any(dim=1)
            counts["visual_sinks"][layer_idx] = (sinks & call.image_mask).sum()
            counts["text_sinks"][layer_idx] = (sinks & ~call.image_mask).sum()
        else:  # decode tokens are text: they can add text sinks (not counted in the report), never visual ones
            store["sinks"][layer_idx] = torch.cat([store["sinks"][layer_idx], sinks], dim=1)

    def _sinks(self, view: LayerView) -> tuple[torch.Tensor, torch.Tensor] | None:
        store = view.call.store.get(self.name)
        if store is None or view.layer_idx not in store["sinks"]:
            return None
        return store["sinks"][view.layer_idx], store["has_visual"][view.layer_idx]

    def sink_positions(self, call: CallState, layer_idx: int) -> torch.Tensor | None:
        """(B, T) bool over absolute positions: the sink tokens VAR found at `layer_idx` in `call`.

        None when VAR did not look at that layer (outside its layers, p = 0, or the forward never reached it).
        Read by `vlm_attn.inspect_attention` to mark the sinks on the image grid.
        """
        store = call.store.get(self.name)
        if store is None:
            return None
        return store["sinks"].get(layer_idx)

    def rows(self, view: LayerView) -> torch.Tensor | None:
        if self.config.p == 0 or view.layer_idx not in self.layers:
            return None
        found = self._sinks(view)
        if found is None:
            return None
        return view.text_rows_after_image() & found[1][:, None]

    def edit_probs(
        self, view: LayerView, rows: RowSet, probs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        sinks, _ = self._sinks(view)  # type: ignore[misc]
        sink_cols = view.call.to_key_slots(sinks, probs.shape[-1])
        new, selected = var_step(probs, view.image_keys, sink_cols, self.config, rows.own)
        counts = view.call.report[self.name]
        counts["rows"][view.layer_idx] += rows.own.sum()
        counts["heads_redistributed"][view.layer_idx] += selected.sum()
        return new, selected

    def summary(self, call: CallState) -> dict[str, Any]:
        counts = call.report.get(self.name)
        if counts is None:
            return {"active": False, "reason": "no image or p = 0"}
        out: dict[str, Any] = {"active": True, "layers": sorted(self.layers)}
        for key, values in counts.items():
            out[key] = {int(i): int(v) for i, v in enumerate(values.tolist()) if i in self.layers}
        out["total_heads_redistributed"] = int(counts["heads_redistributed"].sum())
        return out


def _empty_report(num_layers: int, device: torch.device) -> dict[str, torch.Tensor]:
    keys = ("text_sinks", "visual_sinks", "rows", "heads_redistributed")
    return {k: torch.zeros(num_layers, dtype=torch.long, device=device) for k in keys}
