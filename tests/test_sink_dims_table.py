"""VAR's known sink-dims table is matched on the language model's architecture, not on a checkpoint name (issue 11)."""

from __future__ import annotations

import itertools

import pytest
import torch

import vlm_attn
from vlm_attn.patches import get_adapter
from vlm_attn.patches.base import FamilyAdapter, supported_families, text_signature
from vlm_attn.prompting import build_inputs

from .conftest import make_image

LLAVA_7B = "real_configs/llava-hf__llava-1.5-7b-hf"


def meta_model(config):
    """The model of `config` on the meta device: real structure and config, no weights, built in a fraction of a s."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def real_llava_config(shared_dir, tmp_path, folder: str):
    """llava-1.5-7b's real config, saved under an unrelated folder name and read back from there."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(shared_dir / LLAVA_7B)
    config.save_pretrained(tmp_path / folder)
    return AutoConfig.from_pretrained(tmp_path / folder)


def test_real_llava_under_another_name_matches_and_the_report_says_which_entry(shared_dir, tmp_path):
    config = real_llava_config(shared_dir, tmp_path, "my-finetune-copy")
    assert config._name_or_path.endswith("my-finetune-copy")
    model = meta_model(config)
    entry = get_adapter(model).lookup_sink_dims()
    assert entry is not None and entry.dims == (1415, 2533)
    with vlm_attn.apply(model, vlm_attn.VARConfig()) as handle:
        method = handle.engine.methods[0]
        assert method.sink_dims == (1415, 2533)
        assert method.sink_dims_source == (
            "known table: LLaMA-2-7B / Vicuna-7B (llama, 4096 hidden, 32 layers, 32 heads, 32 kv heads, "
            "11008 intermediate, vocab 32000/32064)"
        )


def test_a_different_vocabulary_or_depth_does_not_match(shared_dir, tmp_path):
    config = real_llava_config(shared_dir, tmp_path, "llava-1.5-7b-hf")  # the name alone no longer matches
    text = config.get_text_config()
    adapter = get_adapter(meta_model(config))
    text.vocab_size = 32128
    assert adapter.lookup_sink_dims() is None
    text.vocab_size = 32000  # Vicuna-7B's own vocabulary: the same language model
    assert adapter.lookup_sink_dims().dims == (1415, 2533)
    text.num_hidden_layers = 31
    assert adapter.lookup_sink_dims() is None
    with pytest.raises(ValueError, match="matches no entry of the known table"):
        vlm_attn.apply(meta_model(config), vlm_attn.VARConfig())


def test_llava_next_vicuna_and_mistral_do_not_collide():
    from transformers import LlavaNextConfig

    vicuna = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, intermediate_size=11008, vocab_size=32064)
    mistral = dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, intermediate_size=14336, vocab_size=32064)
    found = {}
    for name, text in (("vicuna", vicuna), ("mistral", mistral)):
        config = LlavaNextConfig(text_config=text, image_token_index=32000)
        config._name_or_path = "llava-hf/llava-v1.6-vicuna-7b-hf"  # a misleading name changes nothing
        found[name] = get_adapter(meta_model(config)).lookup_sink_dims()
    assert found["vicuna"].dims == (1415, 2533)
    assert found["mistral"] is None


def test_qwen2_vl_entry_is_not_taken_by_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    shape = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064)
    q2 = get_adapter(meta_model(Qwen2VLConfig(text_config=shape, vision_config={"depth": 1})))
    q25 = get_adapter(meta_model(Qwen2_5_VLConfig(text_config=shape, vision_config={"depth": 1})))
    assert q2.lookup_sink_dims().dims == (458, 2570)
    assert q25.lookup_sink_dims() is None  # the same shape, but another model: no published dims


def test_no_two_table_entries_share_a_signature_with_different_dims():
    from vlm_attn.patches.base import _FAMILIES

    supported_families()  # imports every family file
    rows = {}
    for cls in set(_FAMILIES.values()):
        for entry in cls.known_sink_dims:
            for t, v in itertools.product(entry.model_types, entry.vocab_sizes):
                key = (t, entry.hidden_size, entry.num_layers, entry.num_heads, entry.num_kv_heads,
                       entry.intermediate_size, v)
                assert rows.setdefault(key, entry.dims) == entry.dims, key
    assert len(rows) >= 6


def test_signature_reads_missing_kv_heads_as_one_per_head():
    from types import SimpleNamespace

    config = SimpleNamespace(model_type="llama", hidden_size=8, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=None, intermediate_size=16, vocab_size=10)
    assert text_signature(config) == ("llama", 8, 2, 4, 4, 16, 10)
    assert FamilyAdapter.known_sink_dims == ()


def test_report_names_explicit_and_file_sources(load, tmp_path):
    model, proc = load("llava")
    batch = build_inputs(proc, [make_image(0)], ["describe"])
    with vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=(1, 2), tau=2.0)) as handle:
        model(**batch)
        report = handle.report()["var"]
        assert report["sink_dims_source"] == "explicit" and report["sink_dims"] == [1, 2]
    path = tmp_path / "sinks.json"
    path.write_text('{"sink_dims": [3], "hidden_size": 64}')
    with vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=str(path), tau=2.0)) as handle:
        model(**batch)
        assert handle.report()["var"]["sink_dims_source"] == f"file {path}"
