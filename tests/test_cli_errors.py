"""Bad input on the command line: one line on stderr naming the problem and the fix, exit status 2, and nothing
loaded, generated or written (the model loader is made to fail the test if it is reached)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_attn.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_model(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("vlm_attn.loading.load_model", forbidden)


def refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, f"exit status {info.value.code} for {argv}"
    err = capsys.readouterr().err.strip()
    # transformers' own progress bars (loading weights) are not ours; everything else must be the one error line
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "ok.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 50, 3) * 255).astype("uint8")).save(good)
    data = good.read_bytes()
    out = {"good": good, "empty": tmp_path / "empty.png", "fake": tmp_path / "fake.png",
           "truncated": tmp_path / "trunc.png", "gpt2": tmp_path / "gpt2", "heads": tmp_path / "heads.json",
           "sinks": tmp_path / "sinks.json", "bad_sinks": tmp_path / "bad_sinks.json"}
    out["empty"].write_bytes(b"")
    out["fake"].write_text("not a picture")
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["gpt2"].mkdir()
    (out["gpt2"] / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    out["heads"].write_text(json.dumps({"format": "something else"}))
    out["bad_sinks"].write_text(json.dumps({"dims": [1]}))
    return out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["generate", "--model", "tiny-foo"], "no tiny model for 'foo'"),
        (["generate", "--model", "{gpt2}"], "model_type 'gpt2' is not a vision-language family"),
        (["generate", "--image", "{empty}"], "the file is empty"),
        (["generate", "--image", "{fake}"], "not an image file"),
        (["generate", "--image", "{truncated}"], "damaged or truncated"),
        (["generate", "--image", "{missing}"], "no such file"),
        (["generate", "--method", "var", "--sink-dims", "1,abc"], "not comma-separated non-negative integers"),
        (["generate", "--method", "var", "--sink-dims", "{bad_sinks}"], "not a calibrate-sinks JSON"),
        (["generate", "--method", "paint", "--head-sensitivity", "{heads}"], "not a calibrate-heads JSON"),
        (["generate", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["generate", "--device", "cuda:7"], "--device cuda:7"),
        (["generate", "--dtype", "float8"], "--dtype 'float8' is not known"),
        (["inspect", "--image", "{fake}", "--out", "{out_png}"], "not an image file"),
        (["calibrate-sinks", "--image", "{truncated}"], "damaged or truncated"),
        (["calibrate-sinks", "--threshold", "0"], "--threshold must be > 0"),
        (["calibrate-heads", "--images", "{missing}"], "no such folder"),
        (["calibrate-heads", "--n", "0"], "--n must be at least 1"),
        (["eval", "pope", "--model", "tiny-foo", "--out", "{out_dir}"], "no tiny model for 'foo'"),
        (["generate", "--method", "vcd", "--vcd-alpha", "-1"], "VCDConfig.alpha must be"),
        (["generate", "--method", "vcd", "--vcd-noise-step", "1000"], "VCDConfig.noise_step must be"),
        (["generate", "--method", "m3id", "--m3id-alpha", "0"], "M3IDConfig.alpha must be"),
        (["generate", "--method", "icd", "--icd-beta", "2"], "ICDConfig.beta must be"),
        (["inspect", "--method", "vcd", "--out", "{out_png}"], "changes the next-token logits, not attention"),
        (["eval", "pope", "--temperature", "0.5", "--out", "{out_dir}"], "add --do-sample"),
        (["eval", "chair", "--do-sample", "--top-p", "1.5", "--coco-root", "{out_dir}", "--out", "{out_dir}"],
         "--top-p must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_before_any_model_load(argv, expected, files, tmp_path, capsys, no_model):
    names = {**{k: str(v) for k, v in files.items()}, "missing": str(tmp_path / "missing.png"),
             "out_png": str(tmp_path / "look.png"), "out_dir": str(tmp_path / "run")}
    argv = [a.format(**names) if a.startswith("{") else a for a in argv]
    if argv[-2:] == ["--device", "cuda:7"] and __import__("torch").cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    message = refused(argv, capsys)
    assert expected in message, message
    assert not (tmp_path / "look.png").exists() and not (tmp_path / "run").exists()


def test_out_of_range_sink_dims_are_refused_before_generating(monkeypatch, capsys):
    """Dims need the hidden size: checked after the model loads, before the vanilla generation."""
    def forbidden(*args, **kwargs):
        raise AssertionError("generated before the sink dims were checked")

    monkeypatch.setattr("vlm_attn.commands.generate.generate_text", forbidden)
    message = refused(["generate", "--model", "tiny-llava", "--method", "var", "--sink-dims", "9999"], capsys)
    assert "out of range for this model's hidden size 64" in message


def test_head_sensitivity_of_another_model_is_refused_before_generating(tmp_path, monkeypatch, capsys, load):
    from vlm_attn.methods.heads import HeadSensitivity, config_hash

    model, _ = load("qwen2_vl")
    text = model.config.get_text_config()
    other = HeadSensitivity(matrix=[[1.0] * text.num_attention_heads] * text.num_hidden_layers,
                            model_name="another-model", config_hash=config_hash(model.config), recipe={})
    path = tmp_path / "heads.json"
    other.save(path)

    def forbidden(*args, **kwargs):
        raise AssertionError("generated before the head-sensitivity file was checked")

    monkeypatch.setattr("vlm_attn.commands.generate.generate_text", forbidden)
    message = refused(["generate", "--model", "tiny-llava", "--method", "paint", "--head-sensitivity", str(path)],
                      capsys)
    assert "head sensitivity" in message


def test_calibrate_sinks_hint_carries_its_threshold(tmp_path, capsys):
    out = tmp_path / "sinks.json"
    assert main(["calibrate-sinks", "--model", "toy-vlm", "--threshold", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"--sink-dims {out} --tau 4" in printed
    assert json.loads(out.read_text())["threshold"] == 4.0


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "vlm_attn.cli", *args], capture_output=True, text=True,
                          env=environ, cwd=REPO, timeout=240)


def test_exit_codes_and_debug_tracebacks(tmp_path):
    bad = _cli("generate", "--max-new-tokens", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "error: --max-new-tokens must be at least 1, got 0"
    debug = _cli("--debug", "generate", "--max-new-tokens", "0")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    usage = _cli("generate", "--no-such-flag")
    assert usage.returncode == 2


def test_offline_hub_id_fails_fast_in_one_line():
    result = _cli("generate", "--model", "someone/not-cached-model", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "HF_HUB_OFFLINE is set" in lines[0] and "Traceback" not in result.stderr
