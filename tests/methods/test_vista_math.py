"""VISTA's formulas against numbers worked out by hand (SPEC-baselines §4)."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_attn.methods.config import ConfigError
from vlm_attn.methods.vista import VISTAConfig, default_sla_layers, sla_logits, steer_mlp_output


def test_rotation_by_hand_orthogonal():
    # m = (3, 0) (norm 3), v = (0, 2): cos(m, -v) = 0 so s = 1; normalize((1, 0) + 0.5 (0, 1)) = (1, .5)/sqrt(1.25)
    out = steer_mlp_output(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 2.0]]), 0.5)
    n = math.sqrt(1.25)
    assert out.tolist()[0] == pytest.approx([3 / n, 1.5 / n], rel=1e-6)
    assert out.norm().item() == pytest.approx(3.0, rel=1e-6)  # the norm is kept


def test_rotation_by_hand_opposed():
    # m = (-2, 0), v = (1, 0): cos(m, -v) = 1 so s = 2; (-1, 0) + 0.25 * 2 * (1, 0) = (-0.5, 0) -> (-1, 0) * 2
    out = steer_mlp_output(torch.tensor([[-2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), 0.25)
    assert out.tolist()[0] == pytest.approx([-2.0, 0.0], abs=1e-6)
    # 45 degrees away from -v: m = (-1, 1), v = (1, 0); cos(m, -v) = 1/sqrt 2, s = 1 + 1/sqrt 2
    m = torch.tensor([[-1.0, 1.0]])
    s = 1 + 1 / math.sqrt(2)
    d = (-1 / math.sqrt(2) + 0.1 * s, 1 / math.sqrt(2))
    dn = math.hypot(*d)
    out = steer_mlp_output(m, torch.tensor([[1.0, 0.0]]), 0.1)
    assert out.tolist()[0] == pytest.approx([math.sqrt(2) * d[0] / dn, math.sqrt(2) * d[1] / dn], rel=1e-6)
    # a vector at the same direction as m leaves it unchanged (s = 1, direction kept)
    same = steer_mlp_output(torch.tensor([[0.0, 4.0]]), torch.tensor([[0.0, 9.0]]), 0.3)
    assert same.tolist()[0] == pytest.approx([0.0, 4.0], abs=1e-6)


def test_rotation_keeps_dtype_and_broadcasts():
    m = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    v = torch.randn(2, 1, 8)
    out = steer_mlp_output(m, v, 0.2)
    assert out.dtype == torch.bfloat16 and out.shape == m.shape
    # a pre-normalised direction (what the method passes at each step) gives the same rotation
    m = torch.randn(2, 5, 8)
    unit = torch.nn.functional.normalize(v, dim=-1)
    torch.testing.assert_close(steer_mlp_output(m, unit, 0.2, unit=True), steer_mlp_output(m, v, 0.2))


def test_sla_mix_by_hand():
    final = torch.tensor([[1.0, 2.0, 3.0]])
    window = torch.tensor([[3.0, 0.0, -1.0]])
    assert sla_logits(final, window, 0.3).tolist()[0] == pytest.approx([1.6, 1.4, 1.8], rel=1e-6)
    assert torch.equal(sla_logits(final, window, 0.0), final)


def test_default_window_is_the_official_one_on_32_layers():
    assert default_sla_layers(32) == (25, 26, 27, 28, 29, 30)
    assert default_sla_layers(40) == tuple(range(33, 39))
    assert default_sla_layers(4) == (0, 1, 2)
    assert default_sla_layers(1) == (0,)


def test_config_refuses_bad_settings():
    with pytest.raises(ConfigError, match="VISTAConfig.strength must be a number >= 0"):
        VISTAConfig(strength=-0.1)
    with pytest.raises(ConfigError, match=r"VISTAConfig.sla_mix must be a number in \[0, 1\]"):
        VISTAConfig(sla_mix=1.5)
    with pytest.raises(ConfigError, match="VISTAConfig.sla_layers must hold integer layer indices >= 0"):
        VISTAConfig(sla_layers=(-2,))
