"""Bad input that the command line refuses once the model is known but before anything is generated (anchor
layers, attention layers), argparse errors in one line, an image path that is a folder, a GPT-2 folder through the
API, and warnings printed once (issue 12). Generating or loading weights fails the test."""

from __future__ import annotations

import logging

import pytest

from vlm_attn.cli import main


@pytest.fixture
def tiny_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM_ATTN_CACHE", str(tiny_cache.parent / "cli_cache"))


@pytest.fixture
def no_generate(monkeypatch):
    from transformers.generation.utils import GenerationMixin

    def refuse(*args, **kwargs):
        raise AssertionError("text was generated before the bad setting was refused")

    monkeypatch.setattr(GenerationMixin, "generate", refuse)  # every entry point ends in model.generate


def one_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    # transformers' progress bars and our logged warnings (e.g. the demo model's sink dims) are not errors
    lines = [line for line in err.replace("\r", "\n").splitlines()
             if line.strip() and "it/s]" not in line and not line.startswith("WARNING ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert err.rstrip().endswith(lines[0])
    return lines[0]


def test_anchor_layer_beyond_the_depth_refused_before_generating(tiny_env, no_generate, capsys, tmp_path):
    for method in ("funnel", "vicrop"):
        line = one_line(capsys, ["generate", "--model", "tiny-llava", "--method", method, "--anchor-layer", "40"])
        assert "anchor layer 40 out of range for a 4-layer language model (0..3)" in line and "--anchor-layer" in line
    out = tmp_path / "look.png"
    line = one_line(capsys, ["inspect", "--model", "tiny-llava", "--method", "vicrop", "--anchor-layer", "40",
                             "--out", str(out)])
    assert "anchor layer 40 out of range" in line and not out.exists()


def test_attention_layers_beyond_the_depth_refused_before_generating(tiny_env, no_generate, capsys):
    line = one_line(capsys, ["generate", "--model", "tiny-llava", "--method", "var", "--var-layers", "2,9"])
    assert "VARConfig.layers [9] out of range for a 4-layer language model; use layers 0..3" in line


def test_argparse_errors_are_one_line(capsys):
    line = one_line(capsys, ["generate", "--max-new-tokens", "ten"])
    assert line == "error: argument --max-new-tokens: invalid int value: 'ten'; see `vlm-attn generate --help`"
    assert "invalid choice: 'generat'" in one_line(capsys, ["generat"])


def test_inspect_layers_checked_before_loading(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("vlm_attn.loading.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "look.png"
    line = one_line(capsys, ["inspect", "--method", "var", "--layers", "2,x", "--out", str(out)])
    assert "--layers takes" in line and not out.exists()


def test_image_path_that_is_a_folder(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("vlm_attn.loading.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    folder = tmp_path / "photo.png"
    folder.mkdir()
    assert "is a folder, not an image file" in one_line(capsys, ["generate", "--image", str(folder)])


def test_gpt2_folder_through_load_model(monkeypatch, tmp_path):
    """The API checks model_type before any weight loads (and without transformers' list of config classes)."""
    from transformers import AutoModelForImageTextToText, GPT2Config

    import vlm_attn
    from vlm_attn.loading import load_model

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", lambda *a, **k: pytest.fail("weights"))
    monkeypatch.setattr("vlm_attn.loading.load_processor", lambda *a, **k: None)  # GPT-2 has no image processor
    with pytest.raises(vlm_attn.UnsupportedModelError, match="'gpt2' model, which vlm-attn does not support.*llava"):
        load_model(str(tmp_path))


def test_hub_warnings_print_once(monkeypatch, capsys):
    """huggingface_hub has its own stderr handler; the CLI's root handler must not print its records again."""
    import huggingface_hub  # noqa: F401  (sets up its logger and handler)

    monkeypatch.setattr("vlm_attn.loading.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    hub = logging.getLogger("huggingface_hub")
    monkeypatch.setattr(hub, "propagate", True)
    with pytest.raises(SystemExit):
        main(["generate", "--max-new-tokens", "0"])
    assert hub.handlers and hub.propagate is False
