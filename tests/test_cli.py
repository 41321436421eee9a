"""The `vlm-attn` command line on tiny models (issue 2: the README's main job)."""

import json
import subprocess
import sys

import pytest

from vlm_attn.cli import main
from vlm_attn.errors import UserError
from vlm_attn.testing.tiny import tiny_path


@pytest.fixture
def tiny_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM_ATTN_CACHE", str(tiny_cache.parent / "cli_cache"))


def test_generate_var_prints_both_outputs_and_report(tiny_env, capsys):
    assert main(["generate", "--model", "tiny-llava", "--method", "var", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "== vanilla ==" in out and "== var ==" in out and "== report ==" in out
    assert "heads_redistributed" in out and "total_heads_redistributed" in out


def test_generate_json_report_and_flags(tiny_env, capsys, tmp_path):
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"var": {"rho": 0.0}}))
    main(["generate", "--model", "tiny-qwen2_5_vl", "--method", "var", "--method-config", str(cfg),
          "--p", "1.0", "--max-new-tokens", "4", "--no-vanilla", "--json"])
    out = capsys.readouterr().out
    assert "== vanilla ==" not in out
    report = json.loads(out.split("== report ==")[1])
    assert report["var"]["active"] and report["var"]["total_heads_redistributed"] > 0


def test_bad_hyperparameter_and_method(tiny_env):
    # a UserError (one line) or SystemExit, whichever way main() reports user errors
    with pytest.raises((SystemExit, UserError), match=r"VARConfig.p must be a number in \[0, 1\], got 2.0"):
        main(["generate", "--model", "tiny-llava", "--method", "var", "--p", "2"])
    with pytest.raises((SystemExit, UserError), match="unknown method 'foo'"):
        main(["generate", "--model", "tiny-llava", "--method", "foo"])


def test_unreachable_model_suggests_tiny(tmp_path):
    with pytest.raises(SystemExit, match="tiny-llava"):
        main(["generate", "--model", str(tmp_path / "nowhere"), "--method", "var"])


def test_calibrate_sinks_cli(tiny_env, tmp_path, capsys):
    out = tmp_path / "s.json"
    main(["calibrate-sinks", "--model", "tiny-llava", "--threshold", "3", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["sink_dims"] and record["hidden_size"] == 64
    assert "--sink-dims" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no hidden dimension"):
        main(["calibrate-sinks", "--model", "tiny-llava", "--out", str(out)])


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "vlm_attn.cli", "generate", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--sink-dims" in res.stdout


def test_generate_defaults_to_the_shipped_toy_model(capsys):
    assert main(["generate", "--method", "var", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "== var ==" in out and "visual_sinks" in out
