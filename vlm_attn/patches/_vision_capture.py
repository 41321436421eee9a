"""Reading PAINT's scores out of a vision encoder without switching it to eager attention (SPEC §4).

Hooks on each of the two vision attention modules PAINT reads (the first layer and the feature layer) rebuild
softmax(Q K^T * scale) from the module's own projections for that layer only; the tower keeps running SDPA
(or whatever it runs) and every other layer is untouched. Only what the selection needs is kept (the CLS row and
the column sums), streamed: the map is built a block of query rows at a time and reduced at once, so no
(views, heads, T, T) map of a tiled image ever exists (`SCORE_CHUNK_ELEMENTS`). Family files decide which modules,
CLS or not, merging and patch order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .base import VisionScores

Sink = Callable[[str, list[VisionScores]], None]


@dataclass
class InstanceOverride:
    """An attribute set on one object (shadowing its class's method) and removed again by `remove()`."""

    obj: Any
    name: str

    def remove(self) -> None:
        if self.name in vars(self.obj):
            delattr(self.obj, self.name)


def first_entries_of_each_image(
    inner: Any, tile_counts: Callable[[tuple, dict[str, Any]], list[int] | None]
) -> tuple[InstanceOverride, Callable[[int], list[int] | None]]:
    """Wrap `inner.get_image_features` so that, during one call, the index of each image's first encoded entry is
    known (anyres families encode the base image first, then its tiles): returns the override to remove and an
    `entries` callable for `hook_clip_tower`. `tile_counts(args, kwargs)` gives the entries each image is encoded
    as (None: unknown, every entry scored)."""
    import functools

    original = inner.get_image_features
    state: dict[str, list[int]] = {}

    @functools.wraps(original)  # generate reads the signature to pick the encoder's kwargs
    def get_image_features(*args: Any, **kwargs: Any) -> Any:
        counts = tile_counts(args, kwargs)
        if counts is not None:
            state["bases"] = [sum(counts[:i]) for i in range(len(counts))]
        try:
            return original(*args, **kwargs)
        finally:
            state.pop("bases", None)

    inner.get_image_features = get_image_features
    return InstanceOverride(inner, "get_image_features"), lambda n: state.get("bases")


def feature_layer_index(vision_feature_layer: Any, num_layers: int) -> int:
    """0-based encoder layer whose output the projector reads.

    `hidden_states[k]` is the embedding output for k = 0 and the output of layer k - 1 otherwise, so
    `vision_feature_layer = -2` (LLaVA) is layer L_v - 2 and a non-negative k is layer k - 1. With several feature
    layers (a list) the last one is used.
    """
    layer = vision_feature_layer[-1] if isinstance(vision_feature_layer, (list, tuple)) else vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer must be an int or a list of ints, got {vision_feature_layer!r}")
    idx = num_layers + layer if layer < 0 else layer - 1
    if not 0 <= idx < num_layers:
        raise ValueError(
            f"vision_feature_layer {layer} selects no encoder layer's output in a {num_layers}-layer vision tower"
        )
    return idx


# Most fp32 attention entries a score hook holds at once (1 Mi = 4 MiB, twice over: logits and softmax). The full
# maps of a tiled image are far larger (SmolVLM at its real width: 17 views x 12 heads x 1024^2 = 0.8 GiB each);
# blocks of this size also stay in cache (2.5x faster than 16 MiB blocks on a 1024-patch view, measured on CPU).
SCORE_CHUNK_ELEMENTS = 1 << 20


def attention_mask_4d(mask: Any) -> torch.Tensor | None:
    """The mask an encoder hands its attention when it is a 4-D boolean (True = attend) or additive float mask;
    None otherwise (nothing masked)."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 4 and (mask.dtype == torch.bool or mask.is_floating_point()):
        return mask
    return None


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean (True = attend) or float mask as an additive fp32 mask (0 / finfo.min for booleans)."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
            ~mask, torch.finfo(torch.float32).min)
    return mask.float()


def accumulate_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None,
    first_row: torch.Tensor,
    column: torch.Tensor,
    chunk_elements: int | None = None,
) -> None:
    """Add the per-key reductions of softmax(q k^T * scale + mask), in fp32, into `first_row` and `column`, never
    holding more than about `chunk_elements` attention entries (default `SCORE_CHUNK_ELEMENTS`).

    q, k (n, heads, T, d); mask None or a boolean / additive 4-D mask broadcastable to (n, heads, T, T), converted
    to additive fp32 one block at a time. `first_row` (n, T) gets query
    row 0's attention summed over heads (CLS -> every token), `column` (n, T) the attention each key receives summed
    over heads and query rows. Rows of a softmax are independent, so the map is built a block of query rows at a time
    (all rows of several entries when one entry's map fits) and reduced at once.
    """
    n, heads, t, _ = q.shape
    chunk_elements = chunk_elements or SCORE_CHUNK_ELEMENTS
    rows = max(1, min(t, chunk_elements // (heads * t)))
    group = max(1, chunk_elements // (heads * t * t)) if rows == t else 1
    for n0 in range(0, n, group):
        n1 = min(n, n0 + group)
        # Contiguous (heads, d, T) keys and (heads, T, d) queries: the batched matmul over heads runs ~12% faster
        # than on the (T, heads, d) layout a projection's view leaves. Queries are scaled once, not every block.
        keys = k[n0:n1].float().transpose(-1, -2).contiguous()
        queries = (q[n0:n1].float() * scale).contiguous()
        m = None if mask is None else mask[n0:n1] if mask.shape[0] > 1 else mask
        for r0 in range(0, t, rows):
            r1 = min(t, r0 + rows)
            logits = queries[:, :, r0:r1] @ keys
            if m is not None:
                logits = logits + additive_mask(m[:, :, r0:r1] if m.shape[2] > 1 else m)
            probs = torch.softmax(logits, dim=-1)
            column[n0:n1] += probs.sum(dim=(1, 2))
            if r0 == 0:
                first_row[n0:n1] = probs[:, :, 0].sum(dim=1)


def clip_attention_scores(
    module: nn.Module,
    hidden: torch.Tensor,
    mask: Any,
    has_cls: bool,
    chunk_elements: int | None = None,
    projections: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[VisionScores]:
    """PAINT's scores of each of the N entries (images or tiles) of a (N, T, D) input to a CLIP/SigLIP-style attention
    (q_proj, k_proj): CLS -> patch attention summed over heads, and the column mean over heads and query rows.

    The attention is softmax(Q K^T * scale + mask) in fp32, streamed: Q and K are projected for a group of entries at
    a time and each block of query rows is reduced as soon as it is built (`accumulate_scores`), so neither the
    (N, heads, T, T) maps nor all entries' projections exist at once. InternViT's optional `q_norm` / `k_norm` (over the
    whole projection, before the head split) are applied when the module has them. `mask` is what the encoder hands
    its attention (Idefics3 / SmolVLM: the padded patches of a view), or None. `projections` are the (N, T, heads*d)
    outputs of the module's own `q_proj` / `k_proj` on `hidden` when the caller caught them (`hook_clip_tower`
    does), so they are not computed a second time.
    """
    n, t, _ = hidden.shape
    heads = getattr(module, "num_heads", None) or module.config.num_attention_heads
    mask = attention_mask_4d(mask)
    chunk_elements = chunk_elements or SCORE_CHUNK_ELEMENTS
    first_row = torch.zeros(n, t, dtype=torch.float32, device=hidden.device)
    column = torch.zeros(n, t, dtype=torch.float32, device=hidden.device)
    group = max(1, chunk_elements // (heads * t * t))  # entries whose maps fit one chunk (1 for large views)
    for n0 in range(0, n, group):
        n1 = min(n, n0 + group)
        if projections is not None:
            q, k = projections[0][n0:n1], projections[1][n0:n1]
        else:
            x = hidden[n0:n1]
            q, k = module.q_proj(x), module.k_proj(x)
        if hasattr(module, "q_norm"):
            q, k = module.q_norm(q), module.k_norm(k)
        q = q.view(n1 - n0, t, heads, -1).transpose(1, 2)
        k = k.view(n1 - n0, t, heads, -1).transpose(1, 2)
        scale = getattr(module, "scale", None) or getattr(module, "scaling", None) or q.shape[-1] ** -0.5
        m = None if mask is None else mask[n0:n1] if mask.shape[0] > 1 else mask
        accumulate_scores(q, k, scale, m, first_row[n0:n1], column[n0:n1], chunk_elements)
    column = column / (heads * t)
    if has_cls:
        return [VisionScores(cls=c, column=col) for c, col in zip(first_row[:, 1:], column[:, 1:])]
    return [VisionScores(cls=None, column=col) for col in column]


class _ProjectionCatch:
    """Catches the outputs of an attention module's `q_proj` and `k_proj` during one call of that module, so the
    score hook reuses the projections the module computes anyway (about a third of the hook's cost on a tiled
    image). Armed by the module's pre-hook and read by its forward hook; nothing is held between calls."""

    def __init__(self, module: nn.Module) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.armed = False
        self.handles = [
            getattr(module, name).register_forward_hook(self._catcher(name))
            for name in ("q_proj", "k_proj") if isinstance(getattr(module, name, None), nn.Module)
        ]

    def _catcher(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            if self.armed and isinstance(output, torch.Tensor):
                self.outputs[name] = output

        return hook

    def arm(self) -> None:
        self.outputs.clear()
        self.armed = True

    def take(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The caught (q, k) when both were computed from an input of `hidden`'s shape, else None; disarms."""
        q, k = self.outputs.get("q_proj"), self.outputs.get("k_proj")
        self.outputs.clear()
        self.armed = False
        if q is None or k is None or q.shape[:-1] != hidden.shape[:-1] or k.shape[:-1] != hidden.shape[:-1]:
            return None
        return q, k


def hook_clip_tower(
    layers: nn.ModuleList,
    first: int,
    feature: int,
    has_cls: bool,
    sink: Sink,
    entries: Callable[[int], list[int] | None] | None = None,
    attention: str = "self_attn",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Any]:
    """Hooks on `layers[first].<attention>` and `layers[feature].<attention>` of a CLIP-style encoder.

    A pre-hook records the module's input and mask; forward hooks on its `q_proj` / `k_proj` catch the projections
    the module computes; a forward hook then reduces the scores (`clip_attention_scores`). Where the module does
    not call its projections (an implementation that fuses them), they are recomputed from the recorded input.
    `entries(n)` may pick which of the n encoded images are scored (LLaVA-NeXT: the base image of each anyres
    image); None scores all of them. `attention` names the attention submodule of a layer (InternViT: "attention").
    `reduce` maps a (P,) per-patch score vector to the LM's image tokens (pixel shuffle, pooling: sums inside each
    group); it is applied to both the CLS and the column scores.
    """

    def make(kinds: tuple[str, ...], catch: _ProjectionCatch) -> tuple[Callable[..., None], Callable[..., None]]:
        seen: dict[str, Any] = {}

        def before(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            seen["hidden"] = args[0] if args else kwargs["hidden_states"]
            seen["mask"] = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            catch.arm()

        def after(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            hidden, mask = seen.pop("hidden"), seen.pop("mask")
            projections = catch.take(hidden)
            pick = entries(hidden.shape[0]) if entries is not None else None
            if pick is not None:
                index = torch.tensor(pick, device=hidden.device, dtype=torch.long)
                hidden = hidden[index]
                projections = None if projections is None else (projections[0][index], projections[1][index])
                if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[0] > 1:
                    mask = mask[index]
            with torch.no_grad():
                scores = clip_attention_scores(module, hidden, mask, has_cls, projections=projections)
                if reduce is not None:
                    scores = [VisionScores(cls=None if s.cls is None else reduce(s.cls), column=reduce(s.column))
                              for s in scores]
            for kind in kinds:
                sink(kind, scores)

        return before, after

    kinds_at = {first: ("first",)} if first != feature else {first: ("first", "feature")}
    if first != feature:
        kinds_at[feature] = ("feature",)
    handles: list[Any] = []
    for idx, kinds in kinds_at.items():
        module = getattr(layers[idx], attention)
        catch = _ProjectionCatch(module)
        before, after = make(kinds, catch)
        handles += [*catch.handles, module.register_forward_pre_hook(before, with_kwargs=True),
                    module.register_forward_hook(after, with_kwargs=True)]
    return handles


def group_sum(groups: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A `reduce` for `hook_clip_tower`: score of LM token t = sum of the patch scores `groups[t]` (T, g) indexes."""

    def reduce(scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != groups.numel():
            raise ValueError(f"vision scores cover {scores.shape[0]} patches but the token groups {groups.numel()}")
        return scores[groups.to(scores.device)].sum(dim=-1)

    return reduce


def shuffle_groups(shuffle: Callable[[torch.Tensor], torch.Tensor], patches: int) -> torch.Tensor:
    """(T, g) patch indexes of each LM token under a family's own pixel-shuffle function.

    `shuffle` takes a (1, patches, 1) tensor of raster-ordered patches, applies the family's connector shuffle (in the
    layout that connector receives) and returns the result, whose last dim stacks each token's patches; running it
    on the patch indexes themselves (int64, so exact) shows which patches each token holds.
    """
    out = shuffle(torch.arange(patches, dtype=torch.long).view(1, patches, 1))
    groups = out.reshape(-1, out.shape[-1])
    if sorted(groups.flatten().tolist()) != list(range(patches)):
        raise ValueError("the pixel shuffle did not keep every patch exactly once")
    return groups


def qwen_column_sums(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """Column sums over heads and query rows of a Qwen-VL vision attention call: (seq,) fp32.

    Recomputes q and k like the module does (fused qkv, vision rotary embedding) and the softmax inside each
    block of `cu_seqlens` (one image, or one window in Qwen2.5-VL's windowed layers); keys outside a row's block
    receive nothing from it.
    """
    hidden = args[0] if args else kwargs["hidden_states"]
    cu = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
    cos, sin = kwargs.get("position_embeddings", args[2] if len(args) > 2 else None)
    seq = hidden.shape[0]
    q, k, _ = module.qkv(hidden).reshape(seq, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    rotary = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb_vision")
    q, k = rotary(q, k, cos, sin)
    q, k = q.transpose(0, 1), k.transpose(0, 1)  # (heads, seq, d)
    out = torch.zeros(1, seq, dtype=torch.float32, device=hidden.device)
    unused = torch.zeros(1, seq, dtype=torch.float32, device=hidden.device)  # the first-row sums (no CLS here)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        accumulate_scores(q[None, :, start:end], k[None, :, start:end], module.scaling, None,
                          unused[:, start:end], out[:, start:end])
    return out[0]
