"""PAINT math on hand-made vision attention maps: streams, IQR outliers, set algebra, CLS offset, merging."""

from __future__ import annotations

import logging

import pytest
import torch

from vlm_attn.methods.heads import HeadSensitivity, config_hash
from vlm_attn.methods.paint import (
    PAINTConfig,
    TokenSelection,
    column_mean_scores,
    local_stream,
    merge_scores,
    paint_logit_edit,
    select_tokens,
    selection_to_columns,
    spatial_stream,
    summary_tokens,
    top_ratio,
)

F32_MIN = torch.finfo(torch.float32).min


# ---------------------------------------------------------------- streams


def test_local_stream_top_k_by_ratio_with_ties() -> None:
    cls_attn = torch.tensor(
        [
            [2.0, 0.0, 1.0, 0.0, 0.0, 3.0, 0.0, 2.0],
            [2.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
        ]
    ) / 16
    # head sum (x16): [4, 0, 2, 0, 1, 4, 0, 2]
    assert local_stream(cls_attn, 0.25).tolist() == [0, 5]  # floor(0.25 * 8) = 2
    assert local_stream(cls_attn, 0.3).tolist() == [0, 5]  # floor(2.4) = 2
    assert local_stream(cls_attn, 0.375).tolist() == [0, 2, 5]  # 3: tie 2 vs 7 at 2/16 -> lower index
    assert local_stream(cls_attn, 0.0).tolist() == []
    assert local_stream(cls_attn, 1.0).tolist() == list(range(8))
    assert local_stream(cls_attn, 0.25).dtype == torch.int64


def test_top_ratio_floor_is_robust_to_float_noise() -> None:
    scores = torch.arange(100, dtype=torch.float32)
    # 0.29 * 100 = 28.999999999999996 in binary floating point; a plain int() would keep 28
    assert top_ratio(scores, 0.29).numel() == 29
    assert top_ratio(torch.arange(576.0), 0.05).numel() == 28  # the official int(576 * 0.05)
    assert top_ratio(torch.arange(576.0), 0.25).numel() == 144


def _spatial_map() -> torch.Tensor:
    """(heads=2, N=5, N=5): CLS + 4 patches, entries in 1/8."""
    h0 = torch.tensor(
        [
            [4, 2, 0, 1, 1],  # CLS row
            [4, 1, 0, 3, 0],
            [4, 0, 1, 3, 0],
            [4, 1, 1, 1, 1],
            [4, 0, 0, 4, 0],
        ],
        dtype=torch.float32,
    )
    h1 = torch.tensor(
        [
            [4, 0, 4, 0, 0],
            [4, 0, 2, 1, 1],
            [4, 0, 2, 1, 1],
            [4, 1, 2, 0, 1],
            [4, 0, 2, 1, 1],
        ],
        dtype=torch.float32,
    )
    return torch.stack([h0, h1]) / 8


def test_column_mean_scores_and_cls_offset() -> None:
    attn = _spatial_map()
    # column sums over both heads and all 5 rows (x1/8): CLS 40, p0 5, p1 14, p2 15, p3 6 ; divide by 10 rows*heads
    expected = torch.tensor([5.0, 14.0, 15.0, 6.0]) / 80
    torch.testing.assert_close(column_mean_scores(attn, has_cls=True), expected)
    # with CLS: patch 2 (matrix column 3) wins, reported as patch index 2; CLS column never selected
    assert spatial_stream(attn, 0.25, has_cls=True).tolist() == [2]
    assert spatial_stream(attn, 0.5, has_cls=True).tolist() == [1, 2]
    # read as a CLS-free encoder the same matrix has 5 patches; column 0 (40/80) is the top patch
    assert spatial_stream(attn, 0.2, has_cls=False).tolist() == [0]
    assert spatial_stream(attn, 0.4, has_cls=False).tolist() == [0, 3]


def test_summary_tokens_hand_quartiles() -> None:
    scores = torch.tensor([5.0, 50.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0])
    # sorted 1..9, 50; linear quantile: Q1 at 9*0.25=2.25 -> 3.25, Q3 at 6.75 -> 7.75, IQR 4.5
    # k=1.5: bound 7.75 + 6.75 = 14.5 -> only 50 (index 1)
    assert summary_tokens(scores, 1.5).tolist() == [1]
    # k=0: bound 7.75 -> 50, 9, 8 at indices 1, 3, 5
    assert summary_tokens(scores, 0.0).tolist() == [1, 3, 5]
    # uniform: IQR 0, nothing strictly above Q3
    assert summary_tokens(torch.full((6,), 0.2), 1.5).tolist() == []
    # matches numpy-style linear percentiles
    q = torch.quantile(scores.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert q.tolist() == [3.25, 7.75]


# ---------------------------------------------------------------- select_tokens with CLS


def _cls_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """First and feature layer maps (heads=2, N=9): CLS + 8 patches on a 2x4 grid."""
    first = torch.zeros(2, 9, 9)
    first[:, :, 0] = 100.0  # a heavy CLS column must never be selected
    first[0, 0, 1:] = torch.tensor([2.0, 0, 1, 0, 0, 3, 0, 2])
    first[1, 0, 1:] = torch.tensor([2.0, 0, 1, 0, 1, 1, 0, 0])
    first[0, 1:, 8] = 9.0  # patch 7 receives the most attention from the other rows
    feature = torch.ones(2, 9, 9)
    feature[:, 0, 6] = 20.0  # CLS -> patch 5 is an outlier at the feature layer
    return first, feature


def test_select_tokens_with_cls_set_algebra() -> None:
    first, feature = _cls_maps()
    # local score (CLS row, head sum): [4,0,2,0,1,4,0,2] -> top 2 = {0, 5}
    # spatial score: patch 7 = (72 + 2) / 18 is the largest -> top floor(0.125*8)=1 = {7}
    # summary score: [2,2,2,2,2,40,2,2] -> Q1 = Q3 = 2, IQR 0 -> S = {5}
    sel = select_tokens(first, feature, True, local_ratio=0.25, spatial_ratio=0.125, iqr_k=1.5)
    assert isinstance(sel, TokenSelection)
    assert sel.summary.tolist() == [5]
    assert sel.local.tolist() == [0, 7]  # ({0, 5} ∪ {7}) \ {5}
    assert sel.local.dtype == sel.summary.dtype == torch.int64


def test_select_tokens_without_cls_uses_column_means() -> None:
    attn = _spatial_map()  # read as 5 patches
    feature = torch.ones(2, 5, 5)
    feature[:, :, 3] = 10.0  # column 3 is the summary outlier
    # column means (x80): [40, 5, 14, 15, 6]; local 0.4 -> {0, 3}; spatial 0.2 -> {0}; S = {3}
    sel = select_tokens(attn, feature, False, local_ratio=0.4, spatial_ratio=0.2, iqr_k=1.5)
    assert sel.summary.tolist() == [3]
    assert sel.local.tolist() == [0]


# ---------------------------------------------------------------- merging

# raster 4x4 patch grid; merged 2x2 sums, row-major: [2, 5, 8, 1]. The largest single patch (5) lies in
# merged token 1, but merged token 2 has the largest sum: ranking after summing must pick 2.
RASTER = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 5.0, 0.0],
        [2.0, 2.0, 0.0, 0.0],
        [2.0, 2.0, 0.0, 1.0],
    ]
).flatten()
# merge-grouped order: each consecutive 4 patches are one 2x2 window, windows row-major
GROUPED_PERM = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


def test_merge_scores_both_orders() -> None:
    assert merge_scores(RASTER, 2, (4, 4), "raster").tolist() == [2.0, 5.0, 8.0, 1.0]
    grouped = RASTER[GROUPED_PERM]
    assert grouped[:4].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert merge_scores(grouped, 2, None, "merge_grouped").tolist() == [2.0, 5.0, 8.0, 1.0]
    assert merge_scores(grouped, 2, (4, 4), "merge_grouped").tolist() == [2.0, 5.0, 8.0, 1.0]
    assert torch.equal(merge_scores(RASTER, 1), RASTER)


def test_merge_scores_errors() -> None:
    with pytest.raises(ValueError, match="grid"):
        merge_scores(RASTER, 2, None, "raster")
    with pytest.raises(ValueError, match="holds 12 patches"):
        merge_scores(RASTER, 2, (3, 4), "raster")
    with pytest.raises(ValueError, match="divisible"):
        merge_scores(torch.zeros(12), 2, (3, 4), "raster")
    with pytest.raises(ValueError, match="patch_order"):
        merge_scores(RASTER, 2, (4, 4), "columns")  # type: ignore[arg-type]


@pytest.mark.parametrize("order", ["raster", "merge_grouped"])
def test_select_tokens_merged_2x2(order: str) -> None:
    feature_raster = torch.full((4, 4), 0.25)
    feature_raster[2:, :2] = 10.0  # merged token 2 sums to 40, the others to 1
    first_scores, feature_scores = RASTER, feature_raster.flatten()
    if order == "merge_grouped":
        first_scores, feature_scores = first_scores[GROUPED_PERM], feature_scores[GROUPED_PERM]
    # every row equals the scores, so the column mean is the score itself
    first = first_scores.expand(1, 16, 16).clone()
    feature = feature_scores.expand(1, 16, 16).clone()
    sel = select_tokens(
        first, feature, False, local_ratio=0.5, spatial_ratio=0.25, iqr_k=1.5, merge=2, grid=(4, 4), patch_order=order
    )
    # merged first-layer scores [2,5,8,1]: local top 2 -> {1, 2}; spatial top 1 -> {2}
    # merged feature scores [1,1,40,1]: Q1 = 1, Q3 = 1 + 0.25*39 = 10.75, bound 25.375 -> S = {2}
    assert sel.summary.tolist() == [2]
    assert sel.local.tolist() == [1]


def test_selection_to_columns() -> None:
    sel = TokenSelection(local=torch.tensor([0, 2]), summary=torch.tensor([3]))
    local, summary = selection_to_columns(sel, torch.tensor([5, 6, 7, 8]), num_keys=10)
    assert local.nonzero().flatten().tolist() == [5, 7]
    assert summary.nonzero().flatten().tolist() == [8]
    with pytest.raises(ValueError, match="past the 4 image tokens"):
        selection_to_columns(TokenSelection(torch.tensor([4]), torch.tensor([], dtype=torch.int64)), torch.arange(4), 10)


# ---------------------------------------------------------------- logit edit


def test_paint_logit_edit_by_hand() -> None:
    z = torch.tensor([2.0, -1.0, 4.0, -3.0, F32_MIN]).expand(1, 2, 1, 5).clone()
    local = torch.tensor([[True, True, False, False, True]])
    summary = torch.tensor([[False, False, True, True, True]])  # key 4 is masked and in both sets
    out = paint_logit_edit(z, local, summary, 0.5, 0.25)
    # L: 2 + 1 = 3, -1 + 0.5 = -0.5 ; S: 4 + 1 = 5, -3 + 0.75 = -2.25 ; masked key untouched
    assert out[0, 0, 0].tolist() == [3.0, -0.5, 5.0, -2.25, F32_MIN]
    # per-head alpha: head 1 gets alpha 1.0 on L, beta unchanged
    out_h = paint_logit_edit(z, local, summary, torch.tensor([0.5, 1.0]), 0.25)
    assert out_h[0, 0, 0].tolist() == [3.0, -0.5, 5.0, -2.25, F32_MIN]
    assert out_h[0, 1, 0].tolist() == [4.0, 0.0, 5.0, -2.25, F32_MIN]
    assert torch.isfinite(out).all()


def test_paint_logit_edit_overlap_counts_as_summary() -> None:
    z = torch.tensor([2.0, -2.0]).view(1, 1, 1, 2)
    both = torch.tensor([[True, True]])
    out = paint_logit_edit(z, both, both, 1.0, 0.5)
    assert out.flatten().tolist() == [3.0, -1.0]


# ---------------------------------------------------------------- config

CFG = {
    "model_type": "llama",
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "hidden_size": 16,
    "vocab_size": 32,
    "name_or_path": "tiny-llama",
}


def test_paint_config_defaults() -> None:
    cfg = PAINTConfig()
    assert (cfg.alpha, cfg.beta, cfg.local_ratio, cfg.spatial_ratio, cfg.iqr_k) == (0.7, 0.4, 0.25, 0.05, 1.5)
    assert (cfg.guidance, cfg.gamma, cfg.cutoff, cfg.layers) == (True, 1.1, 0.1, None)
    assert (cfg.head_sensitivity, cfg.kappa, cfg.head_top_fraction) == (None, 1.0, None)
    assert cfg.resolve_layers(32) == tuple(range(2, 32))
    assert cfg.head_alphas(CFG) is None
    assert cfg.name == "paint"


def test_paint_collapse_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vlm_attn.methods.paint"):
        PAINTConfig(alpha=0.7)
        assert not caplog.records
        PAINTConfig(alpha=0.8)
    assert len(caplog.records) == 1
    assert "41 tokens" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"beta": -0.1}, "beta"),
        ({"local_ratio": 1.5}, "local_ratio"),
        ({"spatial_ratio": -0.01}, "spatial_ratio"),
        ({"iqr_k": -1.0}, "iqr_k"),
        ({"guidance": "yes"}, "guidance"),
        ({"gamma": -1.0}, "gamma"),
        ({"cutoff": 0.0}, "cutoff"),
        ({"layers": (1, 1)}, "layers"),
        ({"head_sensitivity": 5}, "head_sensitivity"),
        ({"kappa": -1.0}, "kappa"),
        ({"head_top_fraction": 0.0}, "head_top_fraction"),
        ({"head_top_fraction": 1.5}, "head_top_fraction"),
    ],
)
def test_paint_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PAINTConfig(**kwargs)


def test_paint_config_head_alphas(tmp_path) -> None:
    s = torch.tensor([[8.0, 8.0], [8.0, 8.0], [0.1, 0.4], [0.2, 0.8]])  # layers 0-1 are not steered
    hs = HeadSensitivity("tiny-llama", config_hash(CFG), s, {"prompts": ["Describe."], "n_images": 2})
    alphas = PAINTConfig(alpha=0.7, head_sensitivity=hs).head_alphas(CFG)
    assert alphas is not None and alphas.dtype == torch.float32
    # max over the steered layers 2..3 is 0.8: alpha * s / 0.8
    expected = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0875, 0.35], [0.175, 0.7]])
    torch.testing.assert_close(alphas, expected)
    # a path is loaded
    path = tmp_path / "sens.json"
    hs.save(path)
    from_path = PAINTConfig(alpha=0.7, head_sensitivity=str(path), head_top_fraction=0.5).head_alphas(CFG)
    torch.testing.assert_close(from_path, torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.35], [0.0, 0.7]]))
    # another model is refused
    with pytest.raises(ValueError, match="tiny-llama"):
        PAINTConfig(head_sensitivity=hs).head_alphas({**CFG, "num_hidden_layers": 6, "name_or_path": "other"})
