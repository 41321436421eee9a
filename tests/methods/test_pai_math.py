"""PAI math on hand-computed numbers: amplification, masking guard, per-head alpha, guidance, config."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_attn.methods.pai import PAIConfig, amplify_logits, guided_logits, resolve_layers

F32_MIN = torch.finfo(torch.float32).min


def z4(rows: list[list[list[float]]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, R, K) nested lists -> (1, H, R, K)."""
    return torch.tensor(rows, dtype=dtype)[None]


# ---------------------------------------------------------------- amplify_logits


def test_amplify_positive_and_negative_logits() -> None:
    z = z4([[[-2.0, 1.0, 3.0, -0.5]]])
    cols = torch.tensor([[True, True, False, True]])
    out = amplify_logits(z, cols, 0.2)
    # -2 + 0.2*2 = -1.6 ; 1 + 0.2*1 = 1.2 ; 3 unselected ; -0.5 + 0.2*0.5 = -0.4
    expected = z4([[[-1.6, 1.2, 3.0, -0.4]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)
    # out of place: the input is untouched
    torch.testing.assert_close(z, z4([[[-2.0, 1.0, 3.0, -0.5]]]), rtol=0, atol=0)


def test_amplify_alpha_zero_is_identity() -> None:
    z = z4([[[-2.0, 1.0, 3.0]]])
    out = amplify_logits(z, torch.ones(1, 3, dtype=torch.bool), 0.0)
    assert torch.equal(out, z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_masked_columns_stay_masked(dtype: torch.dtype) -> None:
    fmin = torch.finfo(dtype).min
    z = z4([[[fmin, 2.0, float("-inf"), fmin]]], dtype=dtype)
    cols = torch.ones(1, 4, dtype=torch.bool)
    out = amplify_logits(z, cols, 0.2)
    assert out[0, 0, 0, 0] == fmin and out[0, 0, 0, 3] == fmin
    assert out[0, 0, 0, 2] == float("-inf")
    assert out[0, 0, 0, 1] == torch.tensor(2.4, dtype=dtype)
    assert not torch.isnan(out).any() and not torch.isposinf(out).any()
    # the masked keys still get zero probability
    probs = torch.softmax(out.float(), dim=-1)
    assert probs[0, 0, 0, 1] == 1.0


def test_per_head_alpha() -> None:
    z = z4([[[2.0, -4.0, 1.0]], [[2.0, -4.0, 1.0]]])  # H = 2
    cols = torch.tensor([[True, True, False]])
    out = amplify_logits(z, cols, torch.tensor([0.5, 1.0]))
    # head 0: 2 + 1 = 3, -4 + 2 = -2 ; head 1: 2 + 2 = 4, -4 + 4 = 0
    expected = z4([[[3.0, -2.0, 1.0]], [[4.0, 0.0, 1.0]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_per_sample_per_head_alpha_and_one_d_is_per_head() -> None:
    z = torch.tensor([1.0, -1.0]).expand(2, 2, 1, 2).clone()  # B = H = 2
    cols = torch.ones(2, 2, dtype=torch.bool)
    out = amplify_logits(z, cols, torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert out[0, 0, 0].tolist() == [1.0, -1.0]
    assert out[0, 1, 0].tolist() == [2.0, 0.0]
    assert out[1, 0, 0].tolist() == [3.0, 1.0]
    assert out[1, 1, 0].tolist() == [4.0, 2.0]
    # a 1-D tensor is per head even when B == H
    out1 = amplify_logits(z, cols, torch.tensor([0.0, 1.0]))
    assert out1[1, 0, 0].tolist() == [1.0, -1.0]
    assert out1[1, 1, 0].tolist() == [2.0, 0.0]


def test_per_row_columns() -> None:
    z = z4([[[1.0, 1.0], [1.0, 1.0]]])  # R = 2
    cols = torch.tensor([[[True, False], [False, True]]])  # (B, R, K)
    out = amplify_logits(z, cols, 1.0)
    assert out[0, 0].tolist() == [[2.0, 1.0], [1.0, 2.0]]


def test_amplify_shape_errors() -> None:
    z = z4([[[1.0, 2.0]]])
    with pytest.raises(ValueError, match="columns"):
        amplify_logits(z, torch.ones(1, 3, dtype=torch.bool), 0.2)
    with pytest.raises(ValueError, match="bool"):
        amplify_logits(z, torch.ones(1, 2), 0.2)
    with pytest.raises(ValueError, match="alpha"):
        amplify_logits(z, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"\(B, H, R, K\)"):
        amplify_logits(torch.zeros(2, 2), torch.ones(1, 2, dtype=torch.bool), 0.2)


# ---------------------------------------------------------------- guided_logits

P_IMG = [0.5, 0.3, 0.16, 0.04]


def test_guidance_by_hand() -> None:
    # logits = log p, so log_softmax returns log p exactly; the image-free pass is uniform.
    img = torch.tensor([P_IMG]).log()
    noimg = torch.zeros(1, 4)
    out = guided_logits(img, noimg, gamma=1.1, cutoff=0.1)
    # out_j = 1.1 * (log p_j - log 0.25) + log 0.25 = 1.1 log p_j - 0.1 log 0.25
    #   j=0: 1.1*(-0.6931472) + 0.1386294 = -0.6238325
    #   j=1: 1.1*(-1.2039728) + 0.1386294 = -1.1857407
    #   j=2: 1.1*(-1.8325815) + 0.1386294 = -1.8772102
    # cut-off: log 0.04 < log 0.1 + log 0.5 = log 0.05  -> token 3 removed
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, :3], torch.tensor([-0.6238325, -1.1857407, -1.8772102]), rtol=0, atol=1e-6)
    assert out[0, 3] == float("-inf")


def test_guidance_invariant_to_logit_shift_and_gamma_one() -> None:
    img = torch.tensor([P_IMG]).log()
    noimg = torch.tensor([[0.3, -1.0, 2.0, 0.0]])
    base = guided_logits(img, noimg, 1.1, 0.1)
    shifted = guided_logits(img + 7.0, noimg - 3.0, 1.1, 0.1)
    torch.testing.assert_close(base, shifted, rtol=0, atol=1e-5)
    # gamma = 1: the image log-probabilities, cut-off applied
    g1 = guided_logits(img, noimg, 1.0, 0.1)
    torch.testing.assert_close(g1[0, :3], torch.tensor(P_IMG[:3]).log(), rtol=0, atol=1e-6)
    assert g1[0, 3] == float("-inf")


def test_guidance_cutoff_one_keeps_only_argmax_and_half_input() -> None:
    img = torch.tensor([P_IMG, [0.1, 0.2, 0.3, 0.4]]).log().half()
    out = guided_logits(img, torch.zeros(2, 4, dtype=torch.float16), 1.1, 1.0)
    assert out.dtype == torch.float32
    finite = torch.isfinite(out)
    assert finite.tolist() == [[True, False, False, False], [False, False, False, True]]


def test_guidance_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        guided_logits(torch.zeros(1, 4), torch.zeros(1, 3), 1.1, 0.1)
    with pytest.raises(ValueError, match="cutoff"):
        guided_logits(torch.zeros(1, 4), torch.zeros(1, 4), 1.1, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        guided_logits(torch.zeros(1, 4), torch.zeros(1, 4), -1.0, 0.1)


# ---------------------------------------------------------------- config


def test_pai_config_defaults_and_layers() -> None:
    cfg = PAIConfig()
    assert (cfg.alpha, cfg.layers, cfg.guidance, cfg.gamma, cfg.cutoff, cfg.from_first_token) == (
        0.2,
        None,
        True,
        1.1,
        0.1,
        True,
    )
    assert cfg.resolve_layers(32) == tuple(range(2, 32))
    assert cfg.resolve_layers(4) == (2, 3)
    assert cfg.name == "pai"
    assert PAIConfig(layers=[5, 3]).layers == (3, 5)
    assert PAIConfig(layers=(3, 5)).resolve_layers(6) == (3, 5)
    with pytest.raises(ValueError, match=r"layers \[6\] out of range"):
        PAIConfig(layers=(3, 6)).resolve_layers(6)
    assert resolve_layers(None, 2) == ()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": "0.2"}, "alpha"),
        ({"gamma": -1.0}, "gamma"),
        ({"cutoff": 0.0}, "cutoff"),
        ({"cutoff": 1.5}, "cutoff"),
        ({"layers": ()}, "layers"),
        ({"layers": (2, 2)}, "layers"),
        ({"layers": (-1,)}, "layers"),
        ({"layers": (1.5,)}, "layers"),
        ({"guidance": 1}, "guidance"),
        ({"from_first_token": False}, "from_first_token"),
    ],
)
def test_pai_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PAIConfig(**kwargs)


def test_pai_config_range_is_named() -> None:
    with pytest.raises(ValueError, match=r"PAIConfig.cutoff must be a number in \(0, 1\]"):
        PAIConfig(cutoff=2)
    with pytest.raises(ValueError, match=r"PAIConfig.alpha must be a number >= 0"):
        PAIConfig(alpha=-1)
