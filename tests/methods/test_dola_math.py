"""DoLa's formulas against numbers worked out by hand (SPEC-baselines §6)."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_attn.methods.config import ConfigError
from vlm_attn.methods.dola import DoLaConfig, candidate_layers, dola_logits, jensen_shannon, relative_top_filter


def test_candidate_layers_follow_transformers_rule():
    # LLaVA-1.5-7B: 32 untied layers
    assert candidate_layers("low", 32, tied=False) == (0, 2, 4, 6, 8, 10, 12, 14)
    assert candidate_layers("high", 32, tied=False) == (16, 18, 20, 22, 24, 26, 28, 30)
    # tied embeddings start at 2 (1 for two layers, where "low" is then [start])
    assert candidate_layers("low", 32, tied=True) == (2, 4, 6, 8, 10, 12, 14)
    assert candidate_layers("low", 2, tied=True) == (1,)
    assert candidate_layers("low", 4, tied=True) == (2,)
    assert candidate_layers("low", 4, tied=False) == (0,)
    # deeper than 40 layers: fixed windows of 20
    assert candidate_layers("low", 48, tied=False) == tuple(range(0, 20, 2))
    assert candidate_layers("high", 48, tied=False) == tuple(range(28, 48, 2))
    assert candidate_layers((0, 3), 4, tied=False) == (0, 3)
    with pytest.raises(ValueError, match=r"DoLaConfig.layers \[4\] out of range .* 4 decoder layers \(allowed 0..3\)"):
        candidate_layers((1, 4), 4, tied=False)


def test_jensen_shannon_by_hand():
    # final p = (1/2, 1/2), premature q = softmax(0, -log 3) = (3/4, 1/4); M = (5/8, 3/8)
    final = torch.tensor([[0.0, 0.0]])
    early = torch.tensor([[[0.0, -math.log(3.0)]]])
    q, m = (0.75, 0.25), (0.625, 0.375)
    t1 = (m[0] * math.log(m[0] / 0.5) + m[1] * math.log(m[1] / 0.5)) / 2  # mean over V = 2 of M (log M - lp_L)
    t2 = (m[0] * math.log(m[0] / q[0]) + m[1] * math.log(m[1] / q[1])) / 2  # ... of M (log M - lp_j)
    js = jensen_shannon(final, early)
    assert js.shape == (1, 1)
    assert js.item() == pytest.approx(0.5 * (t1 + t2), rel=1e-6)
    # the same as torch's kl_div(reduction="none").mean(-1), which DoLa's code uses
    lp, lq = final.log_softmax(-1), early[0].log_softmax(-1)
    mm = 0.5 * (lp.exp() + lq.exp())
    ref = 0.5 * (torch.nn.functional.kl_div(lp, mm, reduction="none").mean(-1)
                 + torch.nn.functional.kl_div(lq, mm, reduction="none").mean(-1))
    assert js.item() == pytest.approx(ref.item(), rel=1e-6)
    assert jensen_shannon(final, final[None]).item() == pytest.approx(0.0, abs=1e-7)


def test_relative_top_filter_by_hand():
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.05, 0.15]]))
    # bound = log 0.5 + log 0.1 = log 0.05: 0.05 is kept (>=), nothing is below
    assert relative_top_filter(lp, 0.1).tolist() == [[True, True, True, True]]
    # relative_top 0.5: bound log 0.25 -> keep 0.5 and 0.3
    assert relative_top_filter(lp, 0.5).tolist() == [[True, True, False, False]]
    assert relative_top_filter(lp, 0.0).all()


def test_dola_logits_by_hand():
    # final probs (0.5, 0.3, 0.2) via log-probs; two premature layers
    final = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    near = torch.log(torch.tensor([[0.45, 0.35, 0.2]]))  # close to final: small JSD
    far = torch.log(torch.tensor([[0.1, 0.1, 0.8]]))  # far: chosen
    out, chosen = dola_logits(final, torch.stack([near, far]), alpha=1.0, relative_top=0.5)
    assert chosen.tolist() == [1]
    # relative_top 0.5 keeps p >= 0.25: tokens 0 and 1; out = log p_L - log p_far
    assert out[0, 0].item() == pytest.approx(math.log(0.5 / 0.1), rel=1e-5)
    assert out[0, 1].item() == pytest.approx(math.log(0.3 / 0.1), rel=1e-5)
    assert out[0, 2].item() == float("-inf")
    # alpha scales the premature term: log 0.5 - 0.5 log 0.1
    out, _ = dola_logits(final, torch.stack([near, far]), alpha=0.5, relative_top=0.5)
    assert out[0, 0].item() == pytest.approx(math.log(0.5) - 0.5 * math.log(0.1), rel=1e-5)


def test_layer_choice_per_sample_or_per_batch():
    final = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    a = torch.log(torch.tensor([[0.1, 0.1, 0.8], [0.5, 0.3, 0.2]]))  # far for sample 0 only
    b = torch.log(torch.tensor([[0.45, 0.35, 0.2], [0.3, 0.5, 0.2]]))  # a little off for both
    early = torch.stack([a, b])
    _, per_sample = dola_logits(final, early, per_sample=True)
    assert per_sample.tolist() == [0, 1]
    _, batch = dola_logits(final, early, per_sample=False)  # the batch mean is dominated by sample 0's layer a
    assert batch.tolist() == [0, 0]


def test_config_refuses_bad_settings():
    with pytest.raises(ConfigError, match="DoLaConfig.alpha must be a number >= 0"):
        DoLaConfig(alpha=-1.0)
    with pytest.raises(ConfigError, match="DoLaConfig.relative_top must be a number in \\[0, 1\\)"):
        DoLaConfig(relative_top=1.0)
    with pytest.raises(ConfigError, match="DoLaConfig.layers must be 'low', 'high' or premature layer indices"):
        DoLaConfig(layers="middle")
    with pytest.raises(ConfigError, match="DoLaConfig.layers must be 'low', 'high'"):
        DoLaConfig(layers=(-1, 2))
    assert DoLaConfig(layers=[4, 0]).layers == (0, 4)
    with pytest.raises(ValueError, match="shape"):
        dola_logits(torch.zeros(1, 3), torch.zeros(2, 1, 4))
