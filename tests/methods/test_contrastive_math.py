"""VCD, ICD and M3ID formulas against hand-computed numbers (SPEC-baselines §1-§3), and their settings' checks."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_attn.methods.config import ConfigError
from vlm_attn.methods.contrastive import amplified_contrast, implausible
from vlm_attn.methods.icd import DISTURBANCES, ICDConfig, icd_logits
from vlm_attn.methods.m3id import M3IDConfig, m3id_logits, m3id_weight
from vlm_attn.methods.vcd import VCDConfig, add_diffusion_noise, diffusion_coefficients, vcd_logits

INF = float("-inf")


# ------------------------------------------------------------------------------------------- VCD noise
@pytest.mark.parametrize("step, signal, noise", [(250, 0.989, 0.147), (500, 0.863, 0.505), (750, 0.527, 0.850),
                                                 (999, 0.285, 0.959)])
def test_diffusion_coefficients_match_the_official_schedule(step, signal, noise):
    a, b = diffusion_coefficients(step)
    assert a == pytest.approx(signal, abs=6e-4) and b == pytest.approx(noise, abs=6e-4)
    assert a * a + b * b == pytest.approx(1.0, abs=1e-12)


def test_diffusion_coefficients_at_step_zero_by_hand():
    # abar_0 = 1 - beta_0, beta_0 = sigmoid(-6) * (5e-3 - 1e-5) + 1e-5
    beta0 = 1 / (1 + math.exp(6)) * (5e-3 - 1e-5) + 1e-5
    a, b = diffusion_coefficients(0)
    assert a == pytest.approx(math.sqrt(1 - beta0), rel=1e-12) and b == pytest.approx(math.sqrt(beta0), rel=1e-9)


def test_noise_is_the_seeded_draw_per_image():
    pixels = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) / 10
    out = add_diffusion_noise(pixels, 500, seed=7)
    a, b = diffusion_coefficients(500)
    eps = torch.randn((1, 3, 2, 2), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out[1:], a * pixels[1:] + b * eps, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:1], a * pixels[:1] + b * eps, rtol=0, atol=1e-6)  # same seed, same draw
    alone = add_diffusion_noise(pixels[1:], 500, seed=7)
    assert torch.equal(alone, out[1:])  # an image's noise does not depend on its batch
    assert not torch.equal(add_diffusion_noise(pixels, 500, seed=8), out)


def test_noise_splits_flat_patches_by_image_grid():
    pixels = torch.zeros(4 + 8, 5)  # Qwen-VL: flat patches, two images of 1x2x2 and 1x2x4 patches
    grid = torch.tensor([[1, 2, 2], [1, 2, 4]])
    out = add_diffusion_noise(pixels, 500, seed=3, inputs={"image_grid_thw": grid})
    _, b = diffusion_coefficients(500)
    first = torch.randn((4, 5), generator=torch.Generator().manual_seed(3))
    second = torch.randn((8, 5), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, b * torch.cat([first, second]), rtol=0, atol=1e-6)


def test_noise_keeps_the_dtype():
    pixels = torch.ones(1, 3, 2, 2, dtype=torch.bfloat16)
    assert add_diffusion_noise(pixels, 10, seed=0).dtype == torch.bfloat16


@pytest.mark.parametrize("step", [-1, 1000, 2.5, True])
def test_noise_step_out_of_range_is_refused(step):
    with pytest.raises(ValueError, match="noise_step"):
        diffusion_coefficients(step)


# ------------------------------------------------------------------------------------------- contrast + APC
def test_amplified_contrast_by_hand():
    l = torch.tensor([[2.0, 1.0, 0.0, -3.0]])
    l2 = torch.tensor([[1.0, 1.0, 2.0, 0.0]])
    # d = 2 l - l' = [3, 1, -2, -6]; APC(0.1): keep l >= 2 + ln 0.1 = -0.3026 -> token 3 removed
    out = amplified_contrast(l, l2, alpha=1.0, beta=0.1)
    assert torch.equal(out, torch.tensor([[3.0, 1.0, -2.0, INF]]))
    # alpha = 0.5: 1.5 l - 0.5 l' = [2.5, 1, -1, -4.5]; beta = 0.5: keep l >= 2 + ln 0.5 = 1.307 -> only token 0
    out = amplified_contrast(l, l2, alpha=0.5, beta=0.5)
    assert torch.equal(out, torch.tensor([[2.5, INF, INF, INF]]))


def test_apc_reads_the_clean_branch_and_keeps_ties_at_the_bound():
    l = torch.tensor([[1.0, 1.0, 0.5]])
    assert implausible(l, 1.0).tolist() == [[False, False, True]]  # beta = 1: every token tied with the max stays
    # the contrast branch can make the clean arg-max lose, but never removes it
    out = vcd_logits(torch.tensor([[1.0, 0.9]]), torch.tensor([[5.0, 0.0]]), alpha=1.0, beta=0.1)
    assert torch.equal(out, torch.tensor([[-3.0, 1.8]]))


def test_vcd_and_icd_share_the_rule_and_shift_invariance():
    gen = torch.Generator().manual_seed(0)
    l, l2 = torch.randn(3, 11, generator=gen), torch.randn(3, 11, generator=gen)
    assert torch.equal(vcd_logits(l, l2, 1.0, 0.1), icd_logits(l, l2, 1.0, 0.1))
    # raw logits or log-probabilities: same distribution after softmax (SPEC-baselines notation)
    a = torch.softmax(vcd_logits(l, l2, 1.0, 0.1), -1)
    b = torch.softmax(vcd_logits(l.log_softmax(-1), l2.log_softmax(-1), 1.0, 0.1), -1)
    torch.testing.assert_close(a, b)


def test_contrast_refuses_bad_shapes_and_strengths():
    with pytest.raises(ValueError, match="same shape"):
        amplified_contrast(torch.zeros(1, 3), torch.zeros(1, 4), 1.0, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        amplified_contrast(torch.zeros(1, 3), torch.zeros(1, 3), -1.0, 0.1)
    with pytest.raises(ValueError, match="beta"):
        amplified_contrast(torch.zeros(1, 3), torch.zeros(1, 3), 1.0, 0.0)


# ------------------------------------------------------------------------------------------- M3ID
def test_m3id_weight_by_hand():
    assert m3id_weight(0, 0.02) == 0.0
    assert m3id_weight(1, 0.02) == pytest.approx(0.0202013, abs=1e-7)  # e^0.02 - 1
    assert m3id_weight(200, 0.02) == pytest.approx(53.59815, abs=1e-5)  # e^4 - 1
    assert m3id_weight(5, math.log(2)) == pytest.approx(31.0)  # (1 - 2^-5) / 2^-5
    with pytest.raises(ValueError, match="t must be"):
        m3id_weight(-1, 0.02)
    with pytest.raises(ValueError, match="lam"):
        m3id_weight(1, -0.1)


def test_m3id_logits_by_hand():
    lc = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    lu = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    # t = 1, lambda = ln 2: w = 1; out = lc + (lc - lu) = log([1/8, 1/4, 1])
    out = m3id_logits(lc, lu, t=1, lam=math.log(2), alpha=0.6)
    torch.testing.assert_close(out, torch.log(torch.tensor([[0.125, 0.25, 1.0]])))
    # gate: the top probability 0.5 is not below alpha = 0.5 -> not boosted (log-softmax of the image branch)
    torch.testing.assert_close(m3id_logits(lc, lu, t=1, lam=math.log(2), alpha=0.5), lc)
    torch.testing.assert_close(m3id_logits(lc, lu, t=1, lam=math.log(2), alpha=0.5, gate=False),
                               torch.log(torch.tensor([[0.125, 0.25, 1.0]])))
    # t = 0: no boost whatever the gate
    torch.testing.assert_close(m3id_logits(lc, lu, t=0, lam=0.02, alpha=1.0), lc)


def test_m3id_gate_is_per_row_and_reads_log_probabilities():
    # raw logits shifted by +10: the gate must read log-softmax (max p = 0.5), not the raw maximum
    raw = torch.log(torch.tensor([[0.25, 0.25, 0.5], [0.9, 0.05, 0.05]])) + 10
    free = torch.zeros(2, 3)
    out = m3id_logits(raw, free, t=1, lam=math.log(2), alpha=0.6)
    lc = raw.log_softmax(-1)
    torch.testing.assert_close(out[0], lc[0] + (lc[0] - free[0].log_softmax(-1)))
    torch.testing.assert_close(out[1], lc[1])  # confident row: unchanged


def test_configs_combine_with_their_own_step_convention():
    lc = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    lu = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    cfg = M3IDConfig(lam=math.log(2), alpha=0.6)  # t_origin 1: the first generated token (step 0) has t = 1
    torch.testing.assert_close(cfg.combine(lc, lu, 0), m3id_logits(lc, lu, 1, math.log(2), 0.6))
    torch.testing.assert_close(M3IDConfig(lam=math.log(2), alpha=0.6, t_origin=0).combine(lc, lu, 0), lc)
    l, l2 = torch.tensor([[2.0, 1.0, 0.0, -3.0]]), torch.tensor([[1.0, 1.0, 2.0, 0.0]])
    assert torch.equal(VCDConfig().combine(l, l2, 3), torch.tensor([[3.0, 1.0, -2.0, INF]]))
    assert torch.equal(ICDConfig().combine(l, l2, 0), torch.tensor([[3.0, 1.0, -2.0, INF]]))


# ------------------------------------------------------------------------------------------- settings
def test_defaults_are_the_papers():
    vcd, icd, m3id = VCDConfig(), ICDConfig(), M3IDConfig()
    assert (vcd.alpha, vcd.beta, vcd.noise_step) == (1.0, 0.1, 500)
    assert (icd.alpha, icd.beta, icd.disturbance) == (1.0, 0.1, DISTURBANCES[3])
    assert icd.prefix_text() == DISTURBANCES[3] + " "
    assert (m3id.lam, m3id.alpha, m3id.t_origin, m3id.gate) == (0.02, 0.3, 1, True)
    assert all(c.active for c in (vcd, icd, m3id))
    assert not VCDConfig(alpha=0).active and not ICDConfig(alpha=0).active and not M3IDConfig(lam=0).active


@pytest.mark.parametrize("cls, kwargs, field", [
    (VCDConfig, {"alpha": -0.5}, "alpha"), (VCDConfig, {"beta": 0.0}, "beta"), (VCDConfig, {"beta": 1.5}, "beta"),
    (VCDConfig, {"noise_step": 1000}, "noise_step"), (VCDConfig, {"noise_step": 2.5}, "noise_step"),
    (VCDConfig, {"seed": -1}, "seed"), (ICDConfig, {"alpha": -1.0}, "alpha"), (ICDConfig, {"disturbance": " "},
                                                                              "disturbance"),
    (M3IDConfig, {"lam": -0.01}, "lam"), (M3IDConfig, {"alpha": 0.0}, "alpha"), (M3IDConfig, {"t_origin": 2},
                                                                                  "t_origin"),
    (M3IDConfig, {"gate": 1}, "gate"),
])
def test_bad_settings_name_the_field(cls, kwargs, field):
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{field}"):
        cls(**kwargs)


def test_configs_round_trip_through_json(tmp_path):
    for cfg in (VCDConfig(alpha=0.5, noise_step=250), ICDConfig(disturbance=DISTURBANCES[0]), M3IDConfig(gate=False)):
        assert type(cfg).load(cfg.save(tmp_path / f"{cfg.name}.json")) == cfg
