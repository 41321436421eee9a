"""PAINT's vision scores are streamed (no full attention maps) and equal the full-map scores (issue 11)."""

from __future__ import annotations

import pytest
import torch

from vlm_attn.patches import _vision_capture as vc
from vlm_attn.patches import get_adapter
from vlm_attn.patches.base import VisionScores
from vlm_attn.prompting import build_inputs

from .conftest import make_image


def full_map_scores(module, hidden, mask, has_cls, chunk_elements=None, projections=None):
    """The former implementation: every entry's (heads, T, T) fp32 map at once, then reduced (projections are
    recomputed from `hidden`, so a comparison also checks the ones the hooks caught)."""
    n, t, _ = hidden.shape
    heads = getattr(module, "num_heads", None) or module.config.num_attention_heads
    q, k = module.q_proj(hidden), module.k_proj(hidden)
    if hasattr(module, "q_norm"):
        q, k = module.q_norm(q), module.k_norm(k)
    q = q.view(n, t, heads, -1).transpose(1, 2)
    k = k.view(n, t, heads, -1).transpose(1, 2)
    scale = getattr(module, "scale", None) or getattr(module, "scaling", None) or q.shape[-1] ** -0.5
    logits = (q @ k.transpose(-1, -2)).float() * scale
    if vc.attention_mask_4d(mask) is not None:
        logits = logits + vc.additive_mask(mask)
    probs = torch.softmax(logits, dim=-1)
    column = probs.mean(dim=(1, 2))
    if has_cls:
        return [VisionScores(cls=c, column=col) for c, col in zip(probs[:, :, 0, 1:].sum(dim=1), column[:, 1:])]
    return [VisionScores(cls=None, column=col) for col in column]


def assert_same(a: list[VisionScores], b: list[VisionScores]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        torch.testing.assert_close(x.column, y.column, rtol=0, atol=1e-6)
        assert (x.cls is None) == (y.cls is None)
        if x.cls is not None:
            torch.testing.assert_close(x.cls, y.cls, rtol=0, atol=1e-6)


def clip_attention(seed: int = 0):
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPAttention

    torch.manual_seed(seed)
    module = CLIPAttention(CLIPVisionConfig(hidden_size=32, num_attention_heads=4)).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


@pytest.mark.parametrize("chunk", [1, 4 * 17 * 5, 4 * 17 * 17 * 2, 1 << 22])  # a row, 5 rows, 2 entries, all
def test_streamed_equals_full_map_with_a_padding_mask(chunk: int) -> None:
    module = clip_attention()
    hidden = torch.randn(5, 17, 32)
    keep = torch.ones(5, 17, dtype=torch.bool)
    keep[1, 12:] = False  # entry 1 has padded patches
    keep[3, 9:] = False
    bool_mask = keep[:, None, None, :].expand(5, 1, 17, 17)
    float_mask = torch.zeros(5, 1, 17, 17).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = full_map_scores(module, hidden, float_mask, True)
        assert_same(vc.clip_attention_scores(module, hidden, float_mask, True, chunk), ref)
        assert_same(vc.clip_attention_scores(module, hidden, bool_mask, True, chunk), ref)  # bool masks count too
        assert_same(vc.clip_attention_scores(module, hidden, None, False, chunk),
                    full_map_scores(module, hidden, None, False))
    assert float(ref[1].column[12:].abs().max()) == 0.0  # the padded keys receive nothing


def test_streaming_holds_no_full_map(monkeypatch) -> None:
    """The largest softmax built covers at most the chunk budget, not views x heads x T x T."""
    module = clip_attention()
    hidden = torch.randn(6, 17, 32)
    sizes = []
    real_softmax = torch.softmax

    def counting_softmax(x, dim):
        sizes.append(x.numel())
        return real_softmax(x, dim=dim)

    monkeypatch.setattr(torch, "softmax", counting_softmax)
    with torch.no_grad():
        vc.clip_attention_scores(module, hidden, None, True, chunk_elements=4 * 17 * 4)
    assert max(sizes) <= 4 * 17 * 4 < 6 * 4 * 17 * 17
    assert len(sizes) == 6 * 5  # 6 views, 17 rows in blocks of 4


def capture(load, family: str, image_sizes, monkeypatch, implementation) -> list[VisionScores]:
    model, proc = load(family)
    monkeypatch.setattr(vc, "clip_attention_scores", implementation)
    got: dict[str, list[VisionScores]] = {}
    handles = get_adapter(model).paint_capture(lambda kind, scores: got.setdefault(kind, []).extend(scores))
    try:
        images = [make_image(i, size) for i, size in enumerate(image_sizes)]
        with torch.no_grad():
            model(**build_inputs(proc, images, ["describe"] * len(images)))
    finally:
        for h in handles:
            h.remove()
    return got["first"] + got["feature"]


@pytest.mark.parametrize("family", ["idefics3", "internvl"])
def test_tiled_family_scores_equal_the_full_map(load, family: str, monkeypatch) -> None:
    sizes = [(150, 60), (60, 90)]  # wide and tall photos: several tiles each, batched
    streamed_impl = vc.clip_attention_scores

    def streamed(module, hidden, mask, has_cls, chunk_elements=None, projections=None):
        assert projections is not None  # the module's own q_proj / k_proj outputs were caught
        return streamed_impl(module, hidden, mask, has_cls, chunk_elements=97, projections=projections)

    ref = capture(load, family, sizes, monkeypatch, full_map_scores)
    new = capture(load, family, sizes, monkeypatch, streamed)
    assert len(ref) >= 2 * 4  # first + feature layer, several views per image
    assert_same(new, ref)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_column_sums_streamed_equal_one_map_per_block(load, family: str, monkeypatch) -> None:
    model, proc = load(family)
    calls = []
    tower = model.model.visual
    handles = [blk.attn.register_forward_pre_hook(lambda m, a, k: calls.append((m, a, k)), with_kwargs=True)
               for blk in tower.blocks]
    try:
        images = [make_image(0, (112, 84)), make_image(1, (84, 112))]
        with torch.no_grad():
            model(**build_inputs(proc, images, ["describe"] * 2))
    finally:
        for h in handles:
            h.remove()
    assert calls
    for module, args, kwargs in calls:
        with torch.no_grad():
            monkeypatch.setattr(vc, "SCORE_CHUNK_ELEMENTS", 1 << 30)  # one softmax map per block, as before
            whole = vc.qwen_column_sums(module, args, kwargs)
            monkeypatch.setattr(vc, "SCORE_CHUNK_ELEMENTS", 50)  # a query row or two at a time
            streamed = vc.qwen_column_sums(module, args, kwargs)
        torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)
        cu = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
        block = int(cu[1] - cu[0])
        assert float(whole[: block].sum()) == pytest.approx(module.num_heads * block, rel=1e-5)  # rows sum to 1



class _FusedProjections(torch.nn.Module):
    """A CLIP attention whose forward computes q and k with the projection weights but without calling the
    q_proj / k_proj modules (as a fused kernel would), so their forward hooks never fire."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.num_heads, self.scale = inner.q_proj, inner.k_proj, inner.num_heads, inner.scale

    def forward(self, hidden_states, attention_mask=None):
        q = torch.nn.functional.linear(hidden_states, self.q_proj.weight, self.q_proj.bias)
        k = torch.nn.functional.linear(hidden_states, self.k_proj.weight, self.k_proj.bias)
        return q + k


@pytest.mark.parametrize("fused", [False, True])
def test_hooks_reuse_the_modules_projections_or_recompute_them(fused: bool, monkeypatch) -> None:
    """The score hook reads the q / k the module computed (q_proj runs once per call, not twice); a module that
    never calls its projections gets them recomputed from the recorded input. Both equal the full-map scores."""
    module = clip_attention()
    attention = _FusedProjections(module) if fused else module
    layers = torch.nn.ModuleList([torch.nn.Module()])
    layers[0].self_attn = attention
    hidden = torch.randn(3, 17, 32)
    calls, caught = [], []
    original = vc.clip_attention_scores

    def spy(*args, **kwargs):
        caught.append(kwargs.get("projections"))
        return original(*args, **kwargs)

    monkeypatch.setattr(vc, "clip_attention_scores", spy)
    counter = module.q_proj.register_forward_hook(lambda *a: calls.append(1))
    got: dict[str, list[VisionScores]] = {}
    handles = vc.hook_clip_tower(layers, 0, 0, True, lambda kind, s: got.setdefault(kind, []).extend(s))
    try:
        with torch.no_grad():
            attention(hidden)
    finally:
        counter.remove()
        for h in handles:
            h.remove()
    assert (caught[0] is None) == fused
    assert len(calls) == 1  # never twice: the module's own call (caught) or, fused, the hook's recomputation
    with torch.no_grad():
        assert_same(got["first"], full_map_scores(module, hidden, None, True))
        assert_same(got["feature"], got["first"])
