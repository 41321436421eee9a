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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..engine.method import AttentionMethod, CallState, Edit, LayerView, RowSet, Tally
from .config import Bool, ConfigError, Custom, Dims, Layers, MethodConfig, Number, check_number, setting
from .registry import register_method

logger = logging.getLogger(__name__)


def _check_var_layers(name: str, value: Any) -> tuple[int, ...]:
    """VAR's layers: indices >= 0 in the given order (repeats allowed, as before)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in value) or any(x < 0 for x in value):
        raise ConfigError(f"{name} must be non-negative layer indices such as (2, 5), got {value!r} "
                          f"({type(value).__name__})")
    return tuple(int(x) for x in value)


# ------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class VARConfig(MethodConfig):
    """Settings of VAR. Defaults reproduce the paper's hallucination setting."""

    name: ClassVar[str] = "var"
    description: ClassVar[str] = "VAR: move part of the sink tokens' attention to the image (ICLR 2025)"

    p: float = setting(0.6, "fraction of sink attention moved to visual non-sink tokens (paper 0.6)",
                       Number(0.0, 1.0))
    rho: float = setting(0.5, "minimum share of image attention on non-sink image tokens for a head to be "
                              "image-centric (paper 0.5; 0.8 general, 0.9 vision-centric)", Number(0.0, 1.0))
    tau: float = setting(20.0, "sink threshold on |x_d|/RMS(x) over the sink dims (paper 20)",
                         Number(low=0.0, low_open=True))
    image_mass: float = setting(0.2, "minimum attention mass on the image for a head to be image-centric",
                                Number(0.0, 1.0, low_open=True))
    sink_dims: tuple[int, ...] | str | None = setting(
        None, "sink dims as 1415,2533 or a JSON from calibrate-sinks (default: the known table)", Dims())
    layers: tuple[int, ...] | None = setting(None, "decoder layers to steer, e.g. 2,5 (default 2..L-1)",
                                             Custom(_check_var_layers, "decoder layers such as 2,5,9",
                                                    Layers().parse, optional=True))
    exclude_last_layer: bool = setting(False, "skip layer L-1 (the official release's dead option)", Bool())

    @classmethod
    def from_official(cls, kept_fraction: float = 0.6, one_minus_rho: float = 0.5, **kwargs: Any) -> "VARConfig":
        """Build from the official code's conventions (it stores the kept fraction and 1 - rho)."""
        kept = check_number(f"{cls.__name__}.from_official kept_fraction (the kept share, 1 - p)", kept_fraction,
                            0.0, 1.0)
        share = check_number(f"{cls.__name__}.from_official one_minus_rho (1 - rho)", one_minus_rho, 0.0, 1.0)
        return cls(p=1.0 - kept, rho=1.0 - share, **kwargs)

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            if bad := [x for x in self.layers if x >= num_layers]:
                raise ValueError(f"VARConfig.layers {bad} out of range for a {num_layers}-layer language model; "
                                 f"use layers 0..{num_layers - 1} or leave them unset (2..L-1)")
            return self.layers
        return tuple(range(2, num_layers - 1 if self.exclude_last_layer else num_layers))


# ------------------------------------------------------------------------------------------- math
def activation_ratio(
    hidden: torch.Tensor, dims: tuple[int, ...] | torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """|x_d| / RMS(x) per token: (B, T, D) -> (B, T, n) for the n `dims` (all D when None), fp32, weight-free RMS.

    The one implementation of the massive-activation ratio: VAR's sink score takes its max over the sink dims,
    sink calibration looks at every dim. `dims` may be a ready index tensor on the hidden state's device.
    """
    x = hidden.float()
    rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    if dims is not None:
        x = x.index_select(-1, dims if isinstance(dims, torch.Tensor) else torch.tensor(dims, device=x.device))
    return x.abs() / rms


def sink_scores(
    hidden: torch.Tensor, sink_dims: tuple[int, ...] | torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """phi(x) = max_{d in D_sink} |x_d| / RMS(x) per token: (B, T, D) -> (B, T), in fp32, weight-free RMS."""
    return activation_ratio(hidden, sink_dims, eps).amax(dim=-1)


def key_sets(image_cols: torch.Tensor, sink_cols: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """The three key sets VAR sums attention over, as one fp32 matrix (B, K) x 2 -> (B, K, 3).

    Columns: image keys, visual non-sink keys, and sink keys (text and visual) scaled by p, so that one matmul with
    the attention rows gives the image mass, the visual non-sink mass and the moved budget Omega = p * sink mass.
    """
    return torch.stack(
        (image_cols.float(), (image_cols & ~sink_cols).float(), sink_cols.float() * p), dim=-1
    )


def image_centric(
    probs: torch.Tensor, image_cols: torch.Tensor, sink_cols: torch.Tensor, image_mass: float, rho: float
) -> torch.Tensor:
    """(B, H, R) bool: rows whose image mass >= image_mass and whose non-sink share of it >= rho.

    probs (B, H, R, K); image_cols and sink_cols (B, K) bool.
    """
    mass, non_sink, _ = _column_sums(probs, key_sets(image_cols, sink_cols).to(probs.dtype)).unbind(-1)
    return _is_image_centric(mass, non_sink, image_mass, rho)


def _column_sums(probs: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """(B, H, R, K) rows x (B, K, n) key sets -> (B, H, R, n) attention mass per set, in one bmm."""
    b, h, r, k = probs.shape
    return torch.bmm(probs.reshape(b, h * r, k), sets).view(b, h, r, sets.shape[-1])


def _is_image_centric(mass: torch.Tensor, non_sink: torch.Tensor, image_mass: float, rho: float) -> torch.Tensor:
    ok = (mass >= image_mass) & (non_sink >= rho * mass)
    if rho <= 0 or image_mass <= 0:  # otherwise the share test already implies a positive non-sink mass
        ok = ok & (non_sink > 0)
    return ok


def redistribute(
    probs: torch.Tensor, image_cols: torch.Tensor, sink_cols: torch.Tensor, p: float, selected: torch.Tensor
) -> torch.Tensor:
    """Move fraction p of the sink keys' weight onto visual non-sink keys, in proportion, in selected rows.

    Sink keys (text and visual) keep (1 - p) of their weight; the removed mass is added to each visual non-sink key
    j as Omega * a_j / sum_{visual non-sink} a. Row sums are preserved. Unselected rows are returned unchanged.
    """
    sets = key_sets(image_cols, sink_cols, p).to(probs.dtype)
    return _redistribute(probs, sets, _column_sums(probs, sets).unbind(-1), selected)


def _redistribute(
    probs: torch.Tensor, sets: torch.Tensor, sums: tuple[torch.Tensor, ...], selected: torch.Tensor
) -> torch.Tensor:
    # a_j <- a_j * (1 + delta_j) with delta = -p on sinks and Omega / (visual non-sink mass) on visual non-sinks:
    # one (R, 2) x (2, K) product against the sets' last two columns [visual non-sink, p * sink]. `sums` holds
    # the column sums (image mass, visual non-sink mass, Omega), each (B, H, R).
    gain = sums[2] / sums[1].clamp_min(torch.finfo(probs.dtype).tiny)
    coef = torch.stack((gain, torch.full_like(gain, -1.0)), dim=-1) * selected[..., None]  # (B, H, R, 2)
    b, h, r, k = probs.shape
    delta = torch.bmm(coef.view(b, h * r, 2), sets[:, :, 1:].transpose(1, 2)).view(b, h, r, k)
    return torch.addcmul(probs, probs, delta)


def var_step(
    probs: torch.Tensor, sets: torch.Tensor, config: VARConfig, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head selection and redistribution sharing one matmul of column sums.

    probs (B, H, R, K); sets (B, K, 3) from `key_sets(image, sinks, config.p)`; rows (B, R) limits the selection.
    """
    sums = _column_sums(probs, sets).unbind(-1)  # image mass, visual non-sink mass, Omega: (B, H, R) each
    selected = _is_image_centric(sums[0], sums[1], config.image_mass, config.rho) & rows[:, None, :]
    return _redistribute(probs, sets, sums, selected), selected


class KeySets:
    """A layer's key sets over absolute positions, (B, T, 3) as `key_sets` builds them, grown in place.

    A decode step adds one row per sample; writing it into spare room costs one op where a `torch.cat` (plus the
    padding of the new row) cost several on the per-step hot path. The room doubles when it runs out.
    """

    def __init__(self, sets: torch.Tensor, spare: int = 64):
        self._buf = F.pad(sets, (0, 0, 0, spare))
        self._len = sets.shape[1]

    def rows(self) -> torch.Tensor:
        """(B, T, 3): the sets of the T positions seen so far (a view)."""
        return self._buf[:, : self._len]

    def _room(self, extra: int) -> None:
        if self._len + extra > self._buf.shape[1]:
            self._buf = F.pad(self.rows(), (0, 0, 0, max(self._len, extra)))

    def append(self, sets: torch.Tensor) -> None:
        """Add the (B, t, 3) sets of t new positions."""
        self._room(sets.shape[1])
        self._buf[:, self._len : self._len + sets.shape[1]] = sets
        self._len += sets.shape[1]

    def append_text(self, sinks: torch.Tensor, p: float) -> None:
        """Add one text position whose (B, 1) sink flags are `sinks`: only its p-scaled sink column can be non-zero
        (the spare rows are zeros, and rows are only ever appended)."""
        self._room(1)
        self._buf[:, self._len : self._len + 1, 2].masked_fill_(sinks, p)  # a (B, 1) slice: no select of sinks
        self._len += 1


def load_sink_dims(path: str | Path, hidden_size: int | None = None) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Sink dims from a calibration JSON written by `calibrate_sinks` (dims, and the record for checks).

    With `hidden_size`, a file calibrated on a model of another hidden size is refused."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sink-dims file {p} does not exist: run `vlm-attn calibrate-sinks --model ... --out {p}`")
    record = json.loads(p.read_text())
    if hidden_size is not None and record.get("hidden_size") not in (None, hidden_size):
        raise ValueError(f"sink dims in {p} were calibrated on hidden size {record['hidden_size']} "
                         f"({record.get('model')}), but this model has {hidden_size}: recalibrate for this model")
    return tuple(int(d) for d in record["sink_dims"]), record


def _unknown_sink_dims(model: Any) -> str:
    """The error for a model whose sink dims are neither given nor in the known table: how to get them."""
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    return (f"VAR needs the sink dimensions of {name!r}, whose language model matches no entry of the known table "
            "(matched on its architecture). Pass them with VARConfig(sink_dims=(...)) or discover them: "
            "`vlm-attn calibrate-sinks --model ... --out sinks.json` (or vlm_attn.calibrate_sinks) and pass "
            "VARConfig(sink_dims='sinks.json').")


# ------------------------------------------------------------------------------------------- engine plug
@register_method(VARConfig)
class VARMethod(AttentionMethod):
    """Plugs the VAR math into the engine: sinks from layer inputs, redistribution after softmax.

    Sinks are found over all prompt tokens at prefill and kept; each decoded token is tested as it arrives, so a
    cached generation and a no-cache recomputation see the same sink set.
    """

    def __init__(self, config: VARConfig):
        self.config = config
        self.name = config.name
        self.sink_dims: tuple[int, ...] = ()
        self.sink_dims_source = ""
        self._dims_on: dict[torch.device, torch.Tensor] = {}  # sink dims as an index tensor, per device
        self.layers: frozenset[int] = frozenset()

    def bind(self, model: Any, adapter: Any, num_layers: int) -> None:
        hidden = adapter.text_config().hidden_size
        dims = self.config.sink_dims
        source = "explicit"
        if isinstance(dims, (str, Path)):
            source = f"file {dims}"
            dims, _ = load_sink_dims(dims, hidden)
        elif dims is None:
            entry = adapter.lookup_sink_dims()
            if entry is None:
                raise ValueError(_unknown_sink_dims(model))
            dims, source = entry.dims, entry.describe()
        if max(dims) >= hidden:
            raise ValueError(f"VARConfig.sink_dims {dims} out of range for hidden size {hidden}")
        self.sink_dims = tuple(dims)
        self.sink_dims_source = source  # where the dims came from, for the report
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
        if self not in call.store:
            call.store[self] = {"sets": {}, "has_visual": {}, "covers_all": {}}
            call.report[self] = {"text_sinks": {}, "visual_sinks": {}, "rows": Tally(self.num_layers),
                                 "heads_redistributed": Tally(self.num_layers)}
        store, counts = call.store[self], call.report[self]
        sets = store["sets"]
        if call.prefill or layer_idx not in sets:
            image = call.image_mask
            sets[layer_idx] = KeySets(key_sets(image, sinks, self.config.p))  # over absolute positions (B, T, 3)
            store["has_visual"][layer_idx] = (sinks & image).any(dim=1, keepdim=True)
            counted = sinks if call.prompt_mask is None or call.prompt_mask.shape != sinks.shape else (
                sinks & call.prompt_mask.to(sinks.device))  # left padding is masked out of attention: not counted
            counts["visual_sinks"][layer_idx] = (counted & image).sum()
            counts["text_sinks"][layer_idx] = (counted & ~image).sum()
            store["covers_all"][layer_idx] = bool(store["has_visual"][layer_idx].all())
        elif sinks.shape[1] == 1:  # a decode token is text: it can add a text sink (not in the report), never a visual one
            sets[layer_idx].append_text(sinks, self.config.p)
        else:  # a multi-token continuation
            sets[layer_idx].append(key_sets(call.image_mask[:, -sinks.shape[1] :], sinks, self.config.p))

    def sink_positions(self, call: CallState, layer_idx: int) -> torch.Tensor | None:
        """(B, T) bool over absolute positions: the sink tokens VAR found at `layer_idx` in `call`.

        None when VAR did not look at that layer (outside its layers, p = 0, or the forward never reached it).
        Read by `vlm_attn.inspect_attention` to mark the sinks on the image grid.
        """
        store = call.store.get(self)
        if store is None or layer_idx not in store["sets"]:
            return None
        return store["sets"][layer_idx].rows()[..., 2] > 0  # the p-scaled sink column (p > 0 whenever VAR looks)

    def rows(self, view: LayerView) -> torch.Tensor | None:
        store = view.call.store.get(self)  # None when VAR has not looked (no layer input seen, or p = 0)
        if store is None or view.layer_idx not in store["sets"]:
            return None
        has_visual = store["has_visual"][view.layer_idx]  # (B, 1)
        if view.prefill or view.query_image.shape[1] != 1:
            return view.text_rows_after_image() & has_visual
        return has_visual  # decode step: the one row is text after the image in every sample that has one

    def decode_rows_cover_all(self, view: LayerView) -> bool:
        """Every sample has a visual sink in this layer (found with the sinks, one host sync per layer and call)."""
        return view.call.store[self]["covers_all"][view.layer_idx]

    def edit_probs(self, view: LayerView, rows: RowSet, probs: torch.Tensor) -> Edit:
        sets = view.call.to_key_slots(view.call.store[self]["sets"][view.layer_idx].rows(), probs.shape[-1])
        new, selected = var_step(probs, sets, self.config, rows.own)
        counts = view.call.report[self]
        counts["rows"].add(view.layer_idx, rows.own)
        counts["heads_redistributed"].add(view.layer_idx, selected)
        return new, selected

    def summary(self, call: CallState) -> dict[str, Any]:
        counts = call.report.get(self)
        if counts is None:
            return {"active": False, "reason": "no image or p = 0", "sink_dims": list(self.sink_dims),
                    "sink_dims_source": self.sink_dims_source}
        layers = sorted(self.layers)
        out: dict[str, Any] = {"active": True, "layers": layers, "sink_dims": list(self.sink_dims),
                               "sink_dims_source": self.sink_dims_source}
        for key in ("text_sinks", "visual_sinks"):
            out[key] = {i: int(counts[key].get(i, 0)) for i in layers}
        for key in ("rows", "heads_redistributed"):
            per_layer = counts[key].per_layer()
            out[key] = {i: per_layer[i] for i in layers}
        out["total_heads_redistributed"] = sum(out["heads_redistributed"].values())
        return out
