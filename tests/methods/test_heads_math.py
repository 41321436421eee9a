"""Head-specific modulation: config hash, JSON round-trip, compatibility, factors, calibration sums."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from vlm_attn.methods.heads import (
    HeadSensitivity,
    SensitivityAccumulator,
    accumulate_image_mass,
    config_hash,
    head_factors,
)

TEXT = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "hidden_size": 16,
    "vocab_size": 32,
}


class FakeVLMConfig:
    """The part of a transformers VLM config that heads.py reads."""

    def __init__(self, text: dict, name: str) -> None:
        self.model_type = "llava"
        self.name_or_path = name
        self._text = text

    def get_text_config(self, decoder: bool | None = None) -> dict:
        return self._text


def make(matrix, name: str = "tiny-llava", cfg: dict = TEXT) -> HeadSensitivity:
    recipe = {"prompts": ["Please describe this image in detail."], "n_images": 3, "date": "2025-01-01"}
    return HeadSensitivity(name, config_hash(cfg), matrix, recipe)


# ---------------------------------------------------------------- config hash


def test_config_hash_fields_and_sources() -> None:
    payload = json.dumps(TEXT, sort_keys=True, separators=(",", ":"))
    assert config_hash(TEXT) == hashlib.sha256(payload.encode()).hexdigest()
    # the language-model part is hashed, whatever wraps it
    assert config_hash({"model_type": "llava", "text_config": TEXT}) == config_hash(TEXT)
    assert config_hash(FakeVLMConfig(TEXT, "x")) == config_hash(TEXT)
    # extra fields are ignored, architecture fields are not
    assert config_hash({**TEXT, "rope_theta": 1e6}) == config_hash(TEXT)
    assert config_hash({**TEXT, "hidden_size": 32}) != config_hash(TEXT)
    # a missing num_key_value_heads means one per attention head
    no_kv = {k: v for k, v in TEXT.items() if k != "num_key_value_heads"}
    assert config_hash(no_kv) == config_hash({**TEXT, "num_key_value_heads": 2})
    with pytest.raises(ValueError, match="num_hidden_layers"):
        config_hash({"model_type": "llama", "num_attention_heads": 2})


def test_config_hash_transformers_config() -> None:
    transformers = pytest.importorskip("transformers")
    text = transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, hidden_size=16, vocab_size=32
    )
    vlm = transformers.LlavaConfig(text_config=text.to_dict())
    assert config_hash(vlm) == config_hash(text) == config_hash(TEXT)


# ---------------------------------------------------------------- record


def test_json_round_trip(tmp_path) -> None:
    hs = make([[0.1, 0.2], [1 / 3, 0.7]])
    path = tmp_path / "heads.json"
    hs.save(path)
    back = HeadSensitivity.load(path)
    assert back.model_name == "tiny-llava"
    assert back.config_hash == hs.config_hash
    assert back.recipe == hs.recipe
    assert torch.equal(back.matrix, hs.matrix)  # float64 values round-trip exactly
    assert back.matrix.dtype == torch.float64 and (back.num_layers, back.num_heads) == (2, 2)
    data = json.loads(path.read_text())
    assert data["matrix"] == [[0.1, 0.2], [1 / 3, 0.7]]
    assert data["format"] == "vlm_attn.head_sensitivity"


def test_load_rejects_foreign_or_broken_files(tmp_path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"matrix": [[1.0]]}))
    with pytest.raises(ValueError, match="format"):
        HeadSensitivity.load(path)
    record = make([[0.1, 0.2]]).to_dict()
    path.write_text(json.dumps({**record, "num_heads": 3}))
    with pytest.raises(ValueError, match="1 x 3"):
        HeadSensitivity.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        HeadSensitivity.load(path)


@pytest.mark.parametrize(
    "matrix, match",
    [([0.1, 0.2], "shape"), ([[0.1, -0.2]], ">= 0"), ([[float("nan")]], "finite"), ([["a"]], "table")],
)
def test_matrix_validation(matrix, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(matrix)


def test_check_compatible() -> None:
    hs = make([[0.1, 0.2], [0.3, 0.4]])
    hs.check_compatible(FakeVLMConfig(TEXT, "tiny-llava"))
    # other shape: both names in the message
    deeper = {**TEXT, "num_hidden_layers": 3}
    with pytest.raises(ValueError, match=r"'tiny-llava'.*'other-vlm'"):
        hs.check_compatible(FakeVLMConfig(deeper, "other-vlm"))
    # same shape, other architecture: refused by the hash, both names in the message
    wider = {**TEXT, "hidden_size": 64}
    with pytest.raises(ValueError, match=r"'tiny-llava'.*'wide-vlm'.*recalibrate"):
        hs.check_compatible(FakeVLMConfig(wider, "wide-vlm"))


# ---------------------------------------------------------------- factors

S = torch.tensor([[0.1, 0.4], [0.2, 0.8]], dtype=torch.float64)


def test_head_factors_formula() -> None:
    # alpha * s / max s, max 0.8
    torch.testing.assert_close(head_factors(S, 0.7), torch.tensor([[0.0875, 0.35], [0.175, 0.7]], dtype=torch.float64))
    # kappa 2: 0.7 * [[1/64, 1/4], [1/16, 1]]
    torch.testing.assert_close(
        head_factors(S, 0.7, kappa=2.0), torch.tensor([[0.0109375, 0.175], [0.04375, 0.7]], dtype=torch.float64)
    )
    # kappa 0: alpha everywhere, also where s = 0
    z = torch.tensor([[0.0, 0.5]])
    torch.testing.assert_close(head_factors(z, 0.7, kappa=0.0), torch.tensor([[0.7, 0.7]]))


def test_uniform_sensitivity_is_plain_paint() -> None:
    out = head_factors(torch.full((3, 4), 0.37), 0.7)
    torch.testing.assert_close(out, torch.full((3, 4), 0.7))
    assert make([[0.2, 0.2], [0.2, 0.2]]).factors(0.7).tolist() == [[0.7, 0.7], [0.7, 0.7]]


def test_head_factors_top_fraction_and_layers() -> None:
    # top half of 4 heads: 0.8 and 0.4 keep their factor
    assert head_factors(S, 0.8, top_fraction=0.5).tolist() == [[0.0, 0.4], [0.0, 0.8]]
    # ceil(0.3 * 4) = 2 heads, ceil(0.25 * 4) = 1 head
    assert head_factors(S, 0.8, top_fraction=0.3).tolist() == [[0.0, 0.4], [0.0, 0.8]]
    assert head_factors(S, 0.8, top_fraction=0.25).tolist() == [[0.0, 0.0], [0.0, 0.8]]
    # ties go to the lower flat index
    assert head_factors(torch.ones(2, 2), 1.0, top_fraction=0.5).tolist() == [[1.0, 1.0], [0.0, 0.0]]
    # only layer 0 steered: its own max 0.4 normalises, layer 1 is 0
    torch.testing.assert_close(head_factors(S, 0.7, layers=[0]), torch.tensor([[0.175, 0.7], [0.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"kappa": -1.0}, "kappa"),
        ({"top_fraction": 0.0}, "top_fraction"),
        ({"layers": [2]}, "layers"),
    ],
)
def test_head_factors_errors(kwargs: dict, match: str) -> None:
    args = {"alpha": 0.7, **kwargs}
    with pytest.raises(ValueError, match=match):
        head_factors(S, **args)


def test_head_factors_all_zero_refused() -> None:
    with pytest.raises(ValueError, match="no image attention"):
        head_factors(torch.zeros(2, 2), 0.7)


# ---------------------------------------------------------------- calibration


def _probs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B=1, H=2, R=3, K=4; keys 1-2 are image, row 0 is not counted."""
    probs = torch.tensor(
        [
            [[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.125, 0.125], [0.0, 0.5, 0.5, 0.0]],
            [[0.25, 0.25, 0.25, 0.25], [0.25, 0.0, 0.0, 0.75], [0.0, 0.25, 0.25, 0.5]],
        ]
    )[None]
    image = torch.tensor([[False, True, True, False]])
    rows = torch.tensor([[False, True, True]])
    return probs, image, rows


def test_accumulate_image_mass_by_hand() -> None:
    probs, image, rows = _probs()
    mass, n = accumulate_image_mass(probs, image, rows)
    # head 0: 0.375 + 1.0 ; head 1: 0 + 0.5 ; two valid rows
    assert mass.tolist() == [1.375, 0.5]
    assert n.item() == 2 and n.dtype == torch.int64
    # per-row image columns: row 2 sees only key 1
    per_row = image[:, None, :].expand(1, 3, 4).clone()
    per_row[0, 2, 2] = False
    mass_r, _ = accumulate_image_mass(probs, per_row, rows)
    assert mass_r.tolist() == [0.375 + 0.5, 0.0 + 0.25]


def test_accumulator_mean_and_packaging(tmp_path) -> None:
    probs, image, rows = _probs()
    acc = SensitivityAccumulator(num_layers=2, num_heads=2)
    with pytest.raises(ValueError, match=r"layers \[0, 1\]"):
        acc.result()
    acc.add(0, probs, image, rows)
    acc.add(0, probs, image, rows)
    acc.add_sums(1, torch.tensor([1.0, 3.0]), 4)
    assert acc.counts.tolist() == [4, 4]
    # layer 0: (2 * [1.375, 0.5]) / 4 ; layer 1: [1, 3] / 4
    assert acc.result().tolist() == [[0.6875, 0.25], [0.25, 0.75]]
    hs = acc.to_sensitivity("tiny-llava", FakeVLMConfig(TEXT, "tiny-llava"), {"n_images": 2})
    hs.save(tmp_path / "h.json")
    assert HeadSensitivity.load(tmp_path / "h.json").matrix.tolist() == [[0.6875, 0.25], [0.25, 0.75]]
    with pytest.raises(ValueError, match="layer"):
        acc.add(2, probs, image, rows)
    with pytest.raises(ValueError, match="heads"):
        acc.add(0, probs[:, :1], image, rows)
