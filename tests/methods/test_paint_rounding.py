"""PAINT's summary-token count: every IQR outlier (paper) or the official code's int(n * share) (issue 11)."""

from __future__ import annotations

import pytest
import torch

from vlm_attn.methods.paint import PAINTConfig, official_summary_count, select_from_scores, summary_tokens


def flat_with(n: int, peaks: dict[int, float]) -> torch.Tensor:
    """n scores of 1.0 with a few peaks: Q1 = Q3 = 1, IQR 0, so the outliers are exactly the peaks (> 1)."""
    scores = torch.ones(n)
    for i, v in peaks.items():
        scores[i] = v
    return scores


def test_official_count_by_hand() -> None:
    # 1 / 49 = 0.02040816326530612 in float64 and 49 * that = 0.9999999999999999: int() gives 0
    assert 49 * (1 / 49) < 1 and official_summary_count(1, 49) == 0
    assert official_summary_count(2, 49) == 1  # 49 * (2 / 49) = 1.9999999999999998
    assert official_summary_count(3, 49) == 3  # 49 * (3 / 49) = 3.0 exactly
    assert official_summary_count(29, 100) == 28  # 100 * 0.29 = 28.999999999999996
    assert all(official_summary_count(c, 576) == c for c in range(577))  # LLaVA-1.5's grid never loses one


def test_n49_official_drops_the_lowest_scored_outlier() -> None:
    one = flat_with(49, {7: 10.0})
    assert summary_tokens(one, 1.5).tolist() == [7]
    assert summary_tokens(one, 1.5, "paper").tolist() == [7]
    assert summary_tokens(one, 1.5, "official").tolist() == []
    two = flat_with(49, {3: 10.0, 30: 20.0})
    assert summary_tokens(two, 1.5).tolist() == [3, 30]
    assert summary_tokens(two, 1.5, "official").tolist() == [30]  # topk keeps the higher score
    three = flat_with(49, {3: 10.0, 30: 20.0, 40: 5.0})
    assert summary_tokens(three, 1.5, "official").tolist() == [3, 30, 40]


def test_n576_both_roundings_agree() -> None:
    for peaks in ({5: 4.0}, {5: 4.0, 100: 7.0}, {5: 4.0, 100: 7.0, 400: 9.0, 575: 2.0}):
        scores = flat_with(576, peaks)
        assert summary_tokens(scores, 1.5, "official").tolist() == sorted(peaks)
        assert summary_tokens(scores, 1.5, "paper").tolist() == sorted(peaks)


def test_selection_follows_the_rounding_the_local_set_gets_the_dropped_token() -> None:
    # n = 49: one summary outlier at 7, which also tops the local stream (local_ratio 0.05 -> 2 tokens: 7 and 0)
    summary = flat_with(49, {7: 10.0})
    local = flat_with(49, {7: 3.0, 0: 2.0})
    spatial = torch.zeros(49)
    paper = select_from_scores(local, spatial, summary, 0.05, 0.0, 1.5)
    assert (paper.local.tolist(), paper.summary.tolist()) == ([0], [7])
    official = select_from_scores(local, spatial, summary, 0.05, 0.0, 1.5, "official")
    assert (official.local.tolist(), official.summary.tolist()) == ([0, 7], [])


def test_config_option() -> None:
    assert PAINTConfig().summary_rounding == "paper"
    assert PAINTConfig(summary_rounding="official").summary_rounding == "official"
    with pytest.raises(ValueError, match="summary_rounding must be one of 'paper', 'official'"):
        PAINTConfig(summary_rounding="nearest")
    with pytest.raises(ValueError, match="summary_rounding"):
        summary_tokens(torch.ones(4), 1.5, "floor")
