"""Our attention function: SDPA for every head, explicit recomputation only where a method edits.

It is registered in transformers' `AttentionInterface` (with a matching mask function, SPEC §1.2) and reached
through `config._attn_implementation` of the language model only. The per-model engine is found on the attention
module itself (`module._vlm_attn_engine`), so two patched models never share state.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .method import LayerView, RowSet

ENGINE_ATTR = "_vlm_attn_engine"
SDPA_NAME = "vlm_attn"
EAGER_NAME = "vlm_attn_eager"


def _module_eager(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The modeling file's own `eager_attention_forward` (transformers keeps one per architecture)."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward")


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, H, Q, D) -> (B, H, R, D) at the per-sample query indices `index` (B, R)."""
    b, h, _, d = x.shape
    return x.gather(2, index[:, None, :, None].expand(b, h, index.shape[1], d))


def _grouped_matmul(a: torch.Tensor, b: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, H, R, X) @ (B, Hkv, X, Y) -> (B, H, R, Y) without repeating the shared KV heads (GQA).

    One `bmm` on 3-D views: the few-row decode case is dominated by per-op cost, not by the product itself.
    """
    batch, heads, rows, x = a.shape
    out = torch.bmm(a.reshape(batch * kv_heads, (heads // kv_heads) * rows, x), b.reshape(batch * kv_heads, x, -1))
    return out.view(batch, heads, rows, b.shape[-1])


def _row_mask(
    attention_mask: torch.Tensor | None, rows: RowSet, view: LayerView, batch: int, kv_len: int
) -> torch.Tensor:
    """Additive fp32 mask (B, 1, R, K) for the gathered rows, rebuilding causality when SDPA got no mask."""
    if attention_mask is None:
        allowed = (view.key_pos[None, None, :] <= rows.positions[:, :, None])[:, None]
    else:
        m = attention_mask[..., :kv_len].expand(batch, -1, -1, -1)
        if m.shape[2] > 1:
            m = m.gather(2, rows.index[:, None, :, None].expand(batch, m.shape[1], rows.index.shape[1], kv_len))
        if m.dtype != torch.bool:
            return m.float().clamp_min(torch.finfo(torch.float32).min)
        allowed = m
    zero = torch.zeros((), dtype=torch.float32, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(torch.float32).min)


def _decode_index(wanted: torch.Tensor, view: LayerView) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.zeros_like(wanted, dtype=torch.long)
    return index, view.query_pos[index]


def _gather_row_set(wanted: torch.Tensor, view: LayerView) -> RowSet:
    """Pad per-sample row lists (from a (B, Q) bool) to a common length R."""
    if wanted.shape[1] == 1:  # decode step: the one row, no sort and no host sync
        index, positions = view.shared("decode_rows", lambda: _decode_index(wanted, view))
        return RowSet(index=index, valid=wanted, positions=positions, own=wanted)
    counts = wanted.sum(dim=1)
    r = int(counts.max())
    # Stable sort puts wanted rows first, in order; padding repeats them (never written back).
    order = torch.sort((~wanted).to(torch.int8), dim=1, stable=True).indices[:, :r]
    valid = torch.arange(r, device=wanted.device)[None, :] < counts[:, None]
    order = torch.where(valid, order, order[:, :1])
    return RowSet(index=order, valid=valid, positions=view.query_pos[order], own=valid)


def steered_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    *,
    base: Callable[..., tuple[torch.Tensor, Any]],
    base_returns_weights: bool = True,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Run `base` for all heads; recompute and overwrite the (head, row) pairs that active methods edit.

    Scores are computed like eager attention (matmul in the model dtype, softmax in fp32). Decode steps (one query
    row) take a path with no host synchronisation; with no method asking for a row the base output is returned
    untouched (bitwise pass-through). At a decode step whose row is recomputed in every sample, a base that returns
    no weights (SDPA) is not run at all: the explicit path gives every head, edited or not (eager-equal numerics).
    """
    engine = getattr(module, ENGINE_ATTR, None)
    if engine is None or engine.call is None or not engine.methods or engine.paused:
        return base(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    view = engine.layer_view(module.layer_idx, q_len, kv_len)
    asked = [(m, r) for m in engine.methods if (r := m.rows(view)) is not None]
    if q_len > 1:
        asked = [(m, r) for m, r in asked if bool(r.any())]
    if not asked:
        return base(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    # A decode step whose one row is recomputed in every sample: the explicit path yields every head's output
    # (edited or not), so the base SDPA call would only be overwritten.
    whole = q_len == 1 and not base_returns_weights and any(m.decode_rows_cover_all(view) for m, _ in asked)
    out, weights = (None, None) if whole else base(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    wanted = asked[0][1]
    for _, r in asked[1:]:
        wanted = wanted | r
    rows = _gather_row_set(wanted, view)
    scale = scaling if scaling is not None else module.scaling
    q_rows = _gather_rows(query, rows.index) if q_len > 1 else query
    scores = _grouped_matmul(q_rows, key.transpose(-1, -2), key.shape[1]).float() * scale
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if q_len > 1:
        scores = scores + _row_mask(attention_mask, rows, view, batch, kv_len)
    elif attention_mask is not None:  # (a decode row with no mask sees every key)
        # the layers of one forward share their mask tensor (one per layer type): convert each once
        masks = view.parts.setdefault("decode_masks", {})
        cached = masks.get(id(attention_mask))
        if cached is None or cached[0] is not attention_mask:
            cached = masks[id(attention_mask)] = (attention_mask, _row_mask(attention_mask, rows, view, batch, kv_len))
        scores = scores + cached[1]

    if len(asked) == 1:  # one method: its rows are the gathered rows (no per-method narrowing needed)
        per_method = [(asked[0][0], rows)]
    else:
        per_method = []
        for method, r in asked:
            own = (r.gather(1, rows.index) if q_len > 1 else r) & rows.valid
            per_method.append((method, RowSet(rows.index, rows.valid, rows.positions, own)))
    changed: torch.Tensor | None = None
    for method, rs in per_method:
        res = method.edit_logits(view, rs, scores)
        if res is not None:
            scores, ch = res
            ch = ch & rs.own[:, None, :]
            changed = ch if changed is None else changed | ch
    probs = torch.softmax(scores, dim=-1)
    for method, rs in per_method:
        res = method.edit_probs(view, rs, probs)
        if res is not None:
            probs, ch = res
            ch = ch & rs.own[:, None, :]
            changed = ch if changed is None else changed | ch

    if changed is None:  # the methods only looked (capture passes)
        return (out, weights) if out is not None else base(
            module, query, key, value, attention_mask, scaling=scaling, **kwargs
        )
    new = _grouped_matmul(probs.to(value.dtype), value, value.shape[1]).to(query.dtype).transpose(1, 2)
    if out is None:  # every head of the decode row was rewritten
        return new, None
    keep = changed.transpose(1, 2)[..., None]  # (B, R, H, 1)
    if q_len == 1:
        return torch.where(keep, new, out), weights
    if not bool(changed.any()):
        return out, weights
    old = out.gather(1, rows.index[:, :, None, None].expand(batch, rows.index.shape[1], heads, dim))
    merged = torch.where(keep, new, old)
    flat = (rows.index + torch.arange(batch, device=out.device)[:, None] * out.shape[1])[rows.valid]
    out = out.clone()
    out.view(-1, heads, dim)[flat] = merged[rows.valid]
    return out, weights


def _sdpa_steered(module, query, key, value, attention_mask, scaling=None, **kwargs):
    return steered_attention(
        module, query, key, value, attention_mask, scaling, base=sdpa_attention_forward, base_returns_weights=False,
        **kwargs,
    )


def _eager_steered(module, query, key, value, attention_mask, scaling=None, **kwargs):
    return steered_attention(
        module, query, key, value, attention_mask, scaling, base=_module_eager(module), **kwargs
    )


def register() -> None:
    """Register our two implementation names (SDPA- and eager-based), each with its mask function.

    Idempotent. The registry is transformers' own; our per-model state never lives in it.
    """
    AttentionInterface.register(SDPA_NAME, _sdpa_steered)
    AttentionMaskInterface.register(SDPA_NAME, sdpa_mask)
    AttentionInterface.register(EAGER_NAME, _eager_steered)
    AttentionMaskInterface.register(EAGER_NAME, eager_mask)
