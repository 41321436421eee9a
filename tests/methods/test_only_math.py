"""ONLY's formulas against numbers worked out by hand (SPEC-baselines §5)."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_attn.methods.config import ConfigError
from vlm_attn.methods.only import ONLYConfig, drop_outliers, only_fuse, text_visual_entropy_ratio


def test_outliers_above_mean_plus_std_are_zeroed():
    # group = keys 0..3 with weights 0.1, 0.1, 0.1, 0.5: mean 0.2, unbiased std sqrt(0.12/3) = 0.2 -> bound 0.4
    w = torch.tensor([[[0.1, 0.1, 0.1, 0.5, 0.2]]])
    group = torch.tensor([[True, True, True, True, False]])
    out = drop_outliers(w, group)
    assert torch.equal(out, torch.tensor([[[0.1, 0.1, 0.1, 0.0, 0.2]]]))  # key 4 lies outside the group: kept
    # two disjoint groups stacked are treated one by one, in one pass
    w2 = torch.tensor([[[0.1, 0.1, 0.1, 0.5, 0.2, 0.9]]])
    text = torch.tensor([[True, True, True, True, False, False]])
    image = torch.tensor([[False, False, False, False, True, True]])
    assert torch.equal(drop_outliers(w2, torch.stack([text, image])), drop_outliers(drop_outliers(w2, text), image))
    # image group (0.2, 0.9): mean 0.55, unbiased std 0.495 -> bound 1.045, nothing zeroed there
    assert torch.equal(drop_outliers(w2, torch.stack([text, image])), torch.tensor([[[0.1, 0.1, 0.1, 0.0, 0.2, 0.9]]]))
    # equal weights: std 0, nothing strictly above the mean
    assert torch.equal(drop_outliers(torch.full((1, 1, 3), 0.2), torch.ones(1, 3, dtype=torch.bool)),
                       torch.full((1, 1, 3), 0.2))


def test_entropy_ratio_by_hand():
    # head 0: text weights (0.2, 0.2) -> uniform over 2; image (0.3, 0.1, 0.2) -> (1/2, 1/6, 1/3)
    w = torch.tensor([[[0.2, 0.2, 0.3, 0.1, 0.2]]])
    text = torch.tensor([[True, True, False, False, False]])
    image = torch.tensor([[False, False, True, True, True]])

    def h(ps):
        return -sum(p * math.log(p + 1e-6) for p in ps)

    expected = h([0.5, 0.5]) / h([0.5, 1 / 6, 1 / 3])
    assert text_visual_entropy_ratio(w, text, image).item() == pytest.approx(expected, rel=1e-5)
    # no text weight at all: entropy NaN -> 0; no image weight: NaN -> inf, ratio 0
    zero_text = torch.tensor([[[0.0, 0.0, 0.3, 0.1, 0.2]]])
    assert text_visual_entropy_ratio(zero_text, text, image).item() == 0.0
    zero_image = torch.tensor([[[0.2, 0.2, 0.0, 0.0, 0.0]]])
    assert text_visual_entropy_ratio(zero_image, text, image).item() == 0.0


def test_fusion_collaborative_contrastive_and_cutoff_by_hand():
    l = torch.tensor([[2.0, 1.0, -3.0]])
    same = l.clone()  # d = 0 < gamma: collaborative l + 3 l
    out, d = only_fuse(l, same, alpha_pos=3.0, alpha_neg=1.0, gamma=0.2, beta=0.1)
    assert d.item() == pytest.approx(0.0, abs=1e-7)
    # APC on l: keep l >= 2 + log 0.1 = -0.303: tokens 0, 1
    assert out.tolist()[0][:2] == pytest.approx([8.0, 4.0]) and out[0, 2].item() == float("-inf")
    other = torch.tensor([[0.0, 2.0, 0.0]])
    p = torch.softmax(l, -1)
    q = torch.softmax(other, -1)
    expected_d = float((p - q).abs().sum())
    out, d = only_fuse(l, other, alpha_pos=3.0, alpha_neg=1.0, gamma=0.2, beta=0.1)
    assert d.item() == pytest.approx(expected_d, rel=1e-6) and expected_d > 0.2
    assert out.tolist()[0][:2] == pytest.approx([4.0, 0.0])  # (1 + 1) l - 1 * other
    out, _ = only_fuse(l, other, 3.0, 1.0, gamma=0.2, beta=0.0)  # beta 0 keeps every token
    assert out[0, 2].item() == pytest.approx(-6.0)


def test_config_refuses_bad_settings():
    with pytest.raises(ConfigError, match="ONLYConfig.alpha_pos must be a number >= 0"):
        ONLYConfig(alpha_pos=-1.0)
    with pytest.raises(ConfigError, match="ONLYConfig.layer must be an integer >= 0"):
        ONLYConfig(layer=-1)
    with pytest.raises(ConfigError, match=r"ONLYConfig.beta must be a number in \[0, 1\]"):
        ONLYConfig(beta=2.0)
