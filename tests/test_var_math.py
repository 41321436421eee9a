"""VAR's formulas on hand-computed numbers (SPEC §2)."""

import pytest
import torch

from vlm_attn.methods.var import VARConfig, image_centric, redistribute, sink_scores

# One query row over five keys: a text sink (BOS), an image sink, two image non-sinks, a text token.
PROBS = torch.tensor([0.3, 0.2, 0.25, 0.15, 0.1]).view(1, 1, 1, 5)
IMAGE = torch.tensor([[False, True, True, True, False]])
SINKS = torch.tensor([[True, True, False, False, False]])


def test_image_centric_thresholds():
    # image mass 0.6, non-sink share 0.4 / 0.6 = 2/3
    assert image_centric(PROBS, IMAGE, SINKS, image_mass=0.2, rho=0.5).item()
    assert not image_centric(PROBS, IMAGE, SINKS, image_mass=0.2, rho=0.7).item()
    assert not image_centric(PROBS, IMAGE, SINKS, image_mass=0.61, rho=0.5).item()
    assert image_centric(PROBS, IMAGE, SINKS, image_mass=0.6, rho=2 / 3 - 1e-6).item()


def test_redistribution_by_hand():
    selected = torch.ones(1, 1, 1, dtype=torch.bool)
    out = redistribute(PROBS, IMAGE, SINKS, p=0.6, selected=selected).flatten()
    # sinks keep 40%: 0.12, 0.08; Omega = 0.6 * 0.5 = 0.3 split 0.25:0.15 -> +0.1875, +0.1125
    expected = torch.tensor([0.12, 0.08, 0.4375, 0.2625, 0.1])
    assert torch.allclose(out, expected, atol=1e-7)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-7)
    # text non-sink untouched, budget only on visual non-sinks
    assert out[4].item() == pytest.approx(0.1)


def test_redistribution_leaves_unselected_rows():
    probs = torch.cat([PROBS, PROBS], dim=2)  # two rows
    selected = torch.tensor([[[True, False]]])
    out = redistribute(probs, IMAGE, SINKS, p=0.6, selected=selected)
    assert torch.equal(out[0, 0, 1], probs[0, 0, 1])
    assert not torch.equal(out[0, 0, 0], probs[0, 0, 0])


def test_redistribution_p_one_and_zero():
    sel = torch.ones(1, 1, 1, dtype=torch.bool)
    full = redistribute(PROBS, IMAGE, SINKS, p=1.0, selected=sel).flatten()
    assert torch.allclose(full, torch.tensor([0.0, 0.0, 0.25 + 0.5 * 0.625, 0.15 + 0.5 * 0.375, 0.1]))
    assert torch.allclose(redistribute(PROBS, IMAGE, SINKS, p=0.0, selected=sel), PROBS)


def test_sink_scores_by_hand():
    hidden = torch.tensor([[[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 10.0], [1.0, 1.0, 1.0, 1.0]]])
    # RMS: 2.5, 5, 1 (eps 1e-6 is negligible at this precision)
    assert torch.allclose(sink_scores(hidden, (1,)), torch.tensor([[1.6, 0.0, 1.0]]), atol=1e-6)
    assert torch.allclose(sink_scores(hidden, (0, 3)), torch.tensor([[1.2, 2.0, 1.0]]), atol=1e-6)
    assert torch.equal(sink_scores(hidden, (0, 3)) > 1.5, torch.tensor([[False, True, False]]))


def test_official_conventions_map_to_paper():
    cfg = VARConfig.from_official(kept_fraction=0.6, one_minus_rho=0.2)
    assert cfg.p == pytest.approx(0.4) and cfg.rho == pytest.approx(0.8)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"p": 1.5}, "p"), ({"p": -0.1}, "p"), ({"rho": 1.2}, "rho"), ({"tau": 0}, "tau"),
     ({"image_mass": 0.0}, "image_mass"), ({"sink_dims": (-1,)}, "sink_dims"), ({"layers": (-2,)}, "layers")],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        VARConfig(**kwargs)


def test_layer_scope():
    assert VARConfig().resolve_layers(6) == (2, 3, 4, 5)
    assert VARConfig(exclude_last_layer=True).resolve_layers(6) == (2, 3, 4)
    with pytest.raises(ValueError, match="out of range"):
        VARConfig(layers=(7,)).resolve_layers(6)
