"""Head-specific modulation for PAINT (ours: SPEC section 4 names it, no public formula or code exists).

A head's visual sensitivity ``s[l, h]`` is the mean, over a calibration set of images and prompts, of the
image attention mass of its text query rows. It is measured once per model (``SensitivityAccumulator``),
stored as a small JSON (``HeadSensitivity.save``) and turned into per-head amplification factors
``alpha[l, h] = alpha * (s[l, h] / max s) ** kappa`` (``head_factors``). With uniform sensitivity every
factor equals ``alpha``, i.e. plain PAINT.

The JSON records the model name, a hash of the language model's architecture (``config_hash``), the
L x H matrix and the calibration recipe, so that a file measured on one model is refused on another.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "HASHED_FIELDS",
    "HeadSensitivity",
    "SensitivityAccumulator",
    "accumulate_image_mass",
    "config_hash",
    "head_factors",
]

#: Language-model config fields that define the attention shape and the vocabulary. Two checkpoints
#: with equal values (e.g. Vicuna-7B and LLaVA-1.5-7B's LM) hash alike: the hash guards against applying
#: a matrix to a differently shaped model, the stored ``model_name`` says which checkpoint was measured.
HASHED_FIELDS: tuple[str, ...] = (
    "model_type",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "vocab_size",
)

_FORMAT = "vlm_attn.head_sensitivity"
_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Model configs
# --------------------------------------------------------------------------------------------------


def _text_config(model_config: Any) -> Any:
    """The language-model part of a (VLM) config: a transformers config or a plain mapping."""
    if isinstance(model_config, Mapping):
        inner = model_config.get("text_config")
        return inner if isinstance(inner, Mapping) else model_config
    getter = getattr(model_config, "get_text_config", None)
    if callable(getter):
        return getter(decoder=True)
    inner = getattr(model_config, "text_config", None)
    return inner if inner is not None else model_config


def _get(cfg: Any, key: str) -> Any:
    return cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)


def _architecture(model_config: Any) -> dict[str, Any]:
    """The hashed fields of the language model. ``num_key_value_heads`` defaults to the head count
    (how transformers reads a config without it). Layer and head counts are required."""
    cfg = _text_config(model_config)
    arch = {key: _get(cfg, key) for key in HASHED_FIELDS}
    if arch["num_key_value_heads"] is None:
        arch["num_key_value_heads"] = arch["num_attention_heads"]
    for key in ("num_hidden_layers", "num_attention_heads"):
        if not isinstance(arch[key], int) or arch[key] < 1:
            raise ValueError(f"model config lacks a valid language-model {key!r}: {arch[key]!r}")
    return arch


def _model_label(model_config: Any) -> str:
    """A human-readable name for a config: its checkpoint path when known, else its model_type."""
    for key in ("name_or_path", "_name_or_path"):
        name = _get(model_config, key)
        if isinstance(name, str) and name:
            return name
    kind = _get(model_config, "model_type")
    return f"<unnamed {kind} config>" if kind else "<unnamed config>"


def config_hash(model_config: Any) -> str:
    """SHA-256 (hex) of the language model's architecture-defining fields.

    Hashed: ``model_type, num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_size,
    vocab_size`` of the text config (``config.get_text_config(decoder=True)`` for a transformers config,
    ``config["text_config"]`` for a mapping that has one, else the config itself), serialised as
    sorted-key compact JSON. A missing ``num_key_value_heads`` counts as ``num_attention_heads``; other
    missing fields hash as ``null``.
    """
    payload = json.dumps(_architecture(model_config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# The stored sensitivity matrix
# --------------------------------------------------------------------------------------------------


def _as_matrix(matrix: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """Validate and copy an (L, H) sensitivity matrix to a float64 CPU tensor."""
    try:
        t = torch.as_tensor(matrix if isinstance(matrix, Tensor) else list(matrix), dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"matrix must be an L x H table of numbers: {exc}") from exc
    t = t.detach().to("cpu", copy=True)
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"matrix must have shape (L, H) with L, H >= 1, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("matrix must be finite")
    if (t < 0).any():
        raise ValueError("matrix must be >= 0 (image attention mass)")
    return t


@dataclass(frozen=True, eq=False)
class HeadSensitivity:
    """Per-head visual sensitivity of one model, with where it came from.

    Attributes:
        model_name: checkpoint the matrix was measured on (e.g. ``"llava-hf/llava-1.5-7b-hf"``).
        config_hash: :func:`config_hash` of that model's config.
        matrix: (L, H) mean image attention mass per decoder layer and query head; stored as a float64
            CPU tensor (a list of lists is accepted and converted).
        recipe: how it was measured, JSON-serialisable (prompts, number of images, date, ...).
    """

    model_name: str
    config_hash: str
    matrix: Tensor
    recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"model_name must be a non-empty str, got {self.model_name!r}")
        if not isinstance(self.config_hash, str) or not self.config_hash:
            raise ValueError(f"config_hash must be a non-empty str, got {self.config_hash!r}")
        object.__setattr__(self, "matrix", _as_matrix(self.matrix))
        if not isinstance(self.recipe, Mapping):
            raise ValueError(f"recipe must be a mapping, got {type(self.recipe).__name__}")
        recipe = dict(self.recipe)
        try:
            json.dumps(recipe)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"recipe must be JSON-serialisable: {exc}") from exc
        object.__setattr__(self, "recipe", recipe)

    @property
    def num_layers(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.matrix.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation (the file format of :meth:`save`)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "model_name": self.model_name,
            "config_hash": self.config_hash,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "matrix": self.matrix.tolist(),
            "recipe": self.recipe,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadSensitivity:
        """Inverse of :meth:`to_dict`; ValueError on a foreign format or inconsistent shape."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a head-sensitivity record (format {data.get('format')!r}, expected {_FORMAT!r})")
        if data.get("version") != _VERSION:
            raise ValueError(f"unsupported head-sensitivity version {data.get('version')!r} (supported: {_VERSION})")
        try:
            out = cls(
                model_name=data["model_name"],
                config_hash=data["config_hash"],
                matrix=data["matrix"],
                recipe=data.get("recipe", {}),
            )
        except KeyError as exc:
            raise ValueError(f"head-sensitivity record lacks field {exc.args[0]!r}") from exc
        if (data.get("num_layers"), data.get("num_heads")) != (out.num_layers, out.num_heads):
            raise ValueError(
                f"head-sensitivity record says {data.get('num_layers')} x {data.get('num_heads')} "
                f"but its matrix is {out.num_layers} x {out.num_heads}"
            )
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the record as JSON (UTF-8, indented); float64 values round-trip exactly."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1)
            fh.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HeadSensitivity:
        """Read a record written by :meth:`save`."""
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ValueError(f"{os.fspath(path)!r} does not hold a JSON object")
        return cls.from_dict(data)

    def check_compatible(self, model_config: Any) -> None:
        """Refuse a model this matrix was not measured on.

        Raises ValueError naming both models when the architecture hash differs or when the matrix shape
        is not the config's (num_hidden_layers, num_attention_heads).
        """
        arch = _architecture(model_config)
        expected = (arch["num_hidden_layers"], arch["num_attention_heads"])
        other = _model_label(model_config)
        if (self.num_layers, self.num_heads) != expected:
            raise ValueError(
                f"head sensitivity of {self.model_name!r} is {self.num_layers} x {self.num_heads} (layers x heads) "
                f"but model {other!r} has {expected[0]} x {expected[1]}"
            )
        mine = config_hash(model_config)
        if mine != self.config_hash:
            raise ValueError(
                f"head sensitivity was measured on {self.model_name!r} (config hash {self.config_hash[:12]}...) "
                f"and does not fit model {other!r} (config hash {mine[:12]}...): recalibrate for this model"
            )

    def factors(
        self,
        alpha: float,
        kappa: float = 1.0,
        top_fraction: float | None = None,
        *,
        layers: Sequence[int] | None = None,
    ) -> Tensor:
        """:func:`head_factors` of this matrix."""
        return head_factors(self.matrix, alpha, kappa, top_fraction, layers=layers)


# --------------------------------------------------------------------------------------------------
# Factors
# --------------------------------------------------------------------------------------------------


def _count_of(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` robust to float noise (0.3 * 10 -> 3), at least 1, at most n."""
    return max(1, min(n, math.ceil(fraction * n - 1e-9)))


def head_factors(
    sensitivity: Tensor,
    alpha: float,
    kappa: float = 1.0,
    top_fraction: float | None = None,
    *,
    layers: Sequence[int] | None = None,
) -> Tensor:
    """Per-head amplification ``alpha[l, h] = alpha * (s[l, h] / max s) ** kappa``.

    Args:
        sensitivity: (L, H) non-negative visual sensitivity.
        alpha: the method's amplification, >= 0.
        kappa: sharpness, >= 0 (0 gives ``alpha`` everywhere, also for heads with s = 0).
        top_fraction: in (0, 1] or None. When set, only the ``ceil(top_fraction * n)`` heads with the
            largest sensitivity keep their factor (n = number of eligible heads, ranked jointly across
            layers; ties broken by the lower flat index ``l * H + h``); all others get 0.
        layers: the decoder layers that will be steered. When given, ``max s`` and the top-fraction ranking
            are taken over these rows only, and every other row is 0. None = all rows.

    Returns:
        (L, H) tensor in the sensitivity's floating dtype (float32 for integer input), on its device.
        Uniform sensitivity gives ``alpha`` everywhere (plain PAINT).
    """
    if not isinstance(sensitivity, Tensor) or sensitivity.dim() != 2:
        raise ValueError(f"sensitivity must be an (L, H) tensor, got {getattr(sensitivity, 'shape', sensitivity)!r}")
    for name, value in (("alpha", alpha), ("kappa", kappa)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if top_fraction is not None and (
        isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) or not 0 < top_fraction <= 1
    ):
        raise ValueError(f"top_fraction must be in (0, 1] or None, got {top_fraction!r}")
    s = sensitivity if sensitivity.is_floating_point() else sensitivity.float()
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("sensitivity must be finite and >= 0")
    num_layers = s.shape[0]
    eligible = torch.zeros_like(s, dtype=torch.bool)
    if layers is None:
        eligible[:] = True
    else:
        rows = list(layers)
        bad = [i for i in rows if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
        if bad or not rows:
            raise ValueError(f"layers must be a non-empty set of indices in [0, {num_layers}), got {rows!r}")
        eligible[rows] = True
    peak = s[eligible].max()
    if peak <= 0:
        raise ValueError("sensitivity is 0 on every eligible head: the calibration saw no image attention")
    out = alpha * (s / peak).pow(kappa)
    if top_fraction is not None:
        flat = torch.where(eligible, s, torch.full_like(s, -1.0)).flatten()
        keep = _count_of(float(top_fraction), int(eligible.sum()))
        order = torch.sort(flat, descending=True, stable=True).indices[:keep]
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[order] = True
        eligible = eligible & chosen.view_as(s)
    return torch.where(eligible, out, torch.zeros_like(out))


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def accumulate_image_mass(probs: Tensor, image_cols: Tensor, row_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Image attention mass of the valid text query rows of one layer, summed per head.

    Args:
        probs: post-softmax attention, (B, H, R, K).
        image_cols: bool, (B, K) (or (B, R, K) per row): True on image keys.
        row_valid: bool, (B, R): True on the query rows to count (text rows after the image, not padding).

    Returns:
        ``(mass_sum, n_rows)``: mass_sum (H,) float32 (float64 for float64 input) = sum over valid rows of
        ``sum_{j in image} probs[b, h, r, j]``; n_rows = a 0-d int64 tensor, the number of valid rows (the
        same for every head). Both stay on the device of ``probs`` (no host sync), so a calibration loop can
        add them up and divide at the end.
    """
    if probs.dim() != 4:
        raise ValueError(f"probs must have shape (B, H, R, K), got {tuple(probs.shape)}")
    b, _, r, k = probs.shape
    if image_cols.dtype != torch.bool or row_valid.dtype != torch.bool:
        raise ValueError("image_cols and row_valid must be bool tensors")
    if row_valid.shape != (b, r):
        raise ValueError(f"row_valid must have shape (B, R)={(b, r)}, got {tuple(row_valid.shape)}")
    if image_cols.shape == (b, k):
        cols = image_cols[:, None, None, :]
    elif image_cols.shape == (b, r, k):
        cols = image_cols[:, None, :, :]
    else:
        raise ValueError(f"image_cols must have shape (B, K)={(b, k)} or (B, R, K)={(b, r, k)}, got {tuple(image_cols.shape)}")
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    p = probs.to(dtype)
    mass = torch.where(cols, p, torch.zeros((), dtype=dtype, device=p.device)).sum(-1)  # (B, H, R)
    mass = mass * row_valid[:, None, :].to(dtype)
    return mass.sum(dim=(0, 2)), row_valid.sum().to(torch.int64)


class SensitivityAccumulator:
    """Running per-layer, per-head sums of image attention mass and row counts for calibration.

    Feed it one layer's attention at a time (:meth:`add`) over the calibration set, then read the (L, H)
    mean with :meth:`result`. Sums are kept in float64 on the device of the first tensor added (float32
    on devices without float64 support, such as MPS).
    """

    def __init__(self, num_layers: int, num_heads: int) -> None:
        for name, value in (("num_layers", num_layers), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_layers = num_layers
        self.num_heads = num_heads
        self._sums: Tensor | None = None
        self._counts: Tensor | None = None

    def _ensure(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._sums is None or self._counts is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._sums = torch.zeros(self.num_layers, self.num_heads, dtype=dtype, device=device)
            self._counts = torch.zeros(self.num_layers, dtype=torch.int64, device=device)
        return self._sums, self._counts

    def _check_layer(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer!r}")

    def add_sums(self, layer: int, mass_sum: Tensor, n_rows: Tensor | int) -> None:
        """Add a pre-reduced ``(mass_sum (H,), n_rows)`` pair, as returned by :func:`accumulate_image_mass`."""
        self._check_layer(layer)
        if mass_sum.shape != (self.num_heads,):
            raise ValueError(f"mass_sum must have shape (H,)=({self.num_heads},), got {tuple(mass_sum.shape)}")
        sums, counts = self._ensure(mass_sum.device)
        sums[layer] += mass_sum.to(device=sums.device, dtype=sums.dtype)
        counts[layer] += torch.as_tensor(n_rows, device=counts.device, dtype=torch.int64)

    def add(self, layer: int, probs: Tensor, image_cols: Tensor, row_valid: Tensor) -> None:
        """Accumulate one layer's attention; arguments as in :func:`accumulate_image_mass`."""
        self._check_layer(layer)
        if probs.dim() == 4 and probs.shape[1] != self.num_heads:
            raise ValueError(f"probs has {probs.shape[1]} heads, accumulator expects {self.num_heads}")
        self.add_sums(layer, *accumulate_image_mass(probs, image_cols, row_valid))

    @property
    def counts(self) -> Tensor:
        """(L,) int64: valid query rows seen per layer (zeros before the first add)."""
        if self._counts is None:
            return torch.zeros(self.num_layers, dtype=torch.int64)
        return self._counts.detach().cpu().clone()

    def result(self) -> Tensor:
        """(L, H) float64 CPU tensor: mean image mass per head. ValueError if a layer saw no rows."""
        counts = self.counts
        empty = [i for i, c in enumerate(counts.tolist()) if c == 0]
        if empty or self._sums is None:
            raise ValueError(f"no valid text query rows were accumulated for layers {empty}")
        return self._sums.detach().cpu().to(torch.float64) / counts.to(torch.float64)[:, None]

    def to_sensitivity(self, model_name: str, model_config: Any, recipe: Mapping[str, Any]) -> HeadSensitivity:
        """Package :meth:`result` as a :class:`HeadSensitivity` for ``model_config``; checks the shape."""
        out = HeadSensitivity(
            model_name=model_name, config_hash=config_hash(model_config), matrix=self.result(), recipe=dict(recipe)
        )
        out.check_compatible(model_config)
        return out
