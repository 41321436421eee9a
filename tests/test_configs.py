"""Method configs (one base), the registry by name, duplicate refusals, and the CLI's method flags (issues 12, 13)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

import vlm_attn
from vlm_attn import FunnelConfig, PAIConfig, PAINTConfig, VARConfig, ViCropConfig
from vlm_attn.cli import main
from vlm_attn.commands.common import cli_methods
from vlm_attn.errors import UserError
from vlm_attn.loading import sample_image_path
from vlm_attn.methods import registry
from vlm_attn.methods.config import ConfigError, MethodConfig

ALL = (VARConfig, PAIConfig, PAINTConfig, FunnelConfig, ViCropConfig)


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("cls, kwargs, message", [
    (VARConfig, {"p": "0.6"}, "VARConfig.p must be a number in [0, 1], got '0.6' (str)"),
    (VARConfig, {"p": True}, "VARConfig.p must be a number in [0, 1], got True (bool)"),
    (VARConfig, {"tau": 0}, "VARConfig.tau must be a number > 0, got 0 (int)"),
    (VARConfig, {"image_mass": 0.0}, "VARConfig.image_mass must be a number in (0, 1], got 0.0 (float)"),
    (VARConfig, {"exclude_last_layer": 1}, "VARConfig.exclude_last_layer must be a bool (true or false), got 1 (int)"),
    (PAIConfig, {"alpha": -1}, "PAIConfig.alpha must be a number >= 0, got -1 (int)"),
    (PAIConfig, {"cutoff": 0}, "PAIConfig.cutoff must be a number in (0, 1], got 0 (int)"),
    (PAIConfig, {"layers": (2, 2)}, "PAIConfig.layers must not repeat a layer, got (2, 2)"),
    (PAINTConfig, {"summary_rounding": "x"}, "PAINTConfig.summary_rounding must be one of 'paper', 'official', got 'x' (str)"),
    (PAINTConfig, {"head_top_fraction": 2.0}, "PAINTConfig.head_top_fraction must be a number in (0, 1], got 2.0 (float)"),
    (FunnelConfig, {"anchor_layer": 1.0}, "FunnelConfig.anchor_layer must be an integer >= 0, got 1.0 (float)"),
    (FunnelConfig, {"fallback": "skip"}, "FunnelConfig.fallback must be one of 'error', 'crops_only', 'vicrop', got 'skip' (str)"),
    (ViCropConfig, {"ratios": (1.0, 0.0)}, "ViCropConfig.ratios must be a number > 0, got 0.0 (float)"),
    (ViCropConfig, {"bbox_size": 0}, "ViCropConfig.bbox_size must be an integer >= 1, got 0 (int)"),
])
def test_errors_name_class_and_field(cls, kwargs, message):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert str(info.value) == message
    assert isinstance(info.value, UserError) and isinstance(info.value, TypeError) and "\n" not in message


def test_from_official_names_its_own_argument():
    with pytest.raises(ConfigError, match=r"kept_fraction .* must be a number in \[0, 1\], got 1.5 \(float\)"):
        VARConfig.from_official(kept_fraction=1.5)
    with pytest.raises(ConfigError, match="one_minus_rho"):
        VARConfig.from_official(one_minus_rho=-0.1)
    assert VARConfig.from_official(kept_fraction=0.25).p == 0.75


@pytest.mark.parametrize("cls", ALL)
def test_every_config_is_frozen_and_normalised(cls):
    config = cls()
    assert isinstance(config, MethodConfig) and registry.lookup(cls.name).config is cls
    first = next(iter(cls.settings()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, first, getattr(config, first))
    assert all(f.metadata["help"] for f in cls.settings().values())  # --help text for every field


def test_lists_become_tuples():
    assert VARConfig(sink_dims=[3, 1], layers=[4, 2]).sink_dims == (3, 1)
    assert PAIConfig(layers=[5, 2]).layers == (2, 5)
    assert ViCropConfig(ratios=[1, 2]).ratios == (1.0, 2.0)


# ------------------------------------------------------------------------------------------- serialisation
@pytest.mark.parametrize("config", [
    VARConfig(p=0.3, sink_dims=(7, 9), layers=(2, 3)), PAIConfig(alpha=0.5, layers=(2, 4), guidance=False),
    PAINTConfig(beta=0.2, summary_rounding="official", head_sensitivity="h.json"), FunnelConfig(anchor_layer=3),
    ViCropConfig(ratios=(1.0, 1.5)),
])
def test_round_trip(config, tmp_path):
    assert type(config).from_dict(config.to_dict()) == config
    path = config.save(tmp_path / "c.json")
    record = json.loads(path.read_text())
    assert record["method"] == config.name and record["version"] == type(config).version == 1
    assert type(config).load(path) == config


def test_from_dict_and_load_refusals(tmp_path):
    with pytest.raises(ConfigError, match=r"VARConfig has no setting 'alpha', 'q'; known: p, rho"):
        VARConfig.from_dict({"p": 0.5, "alpha": 1, "q": 2})
    path = VARConfig().save(tmp_path / "v.json")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "version": 0}))
    with pytest.raises(ConfigError, match="saved by VARConfig version 0, this is version 1"):
        VARConfig.load(path)
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="holds a 'var' config, not PAIConfig"):
        PAIConfig.load(path)


# ------------------------------------------------------------------------------------------- registry
def test_registry_by_name():
    ours = {n for n, c in registry.config_classes().items() if issubclass(c, MethodConfig)}  # tests add others
    contrastive = {"vcd", "icd", "m3id"}  # second-branch decoders (methods/vcd.py, icd.py, m3id.py)
    same_forward = {"dola", "vista", "only"}  # read-out decoders (methods/dola.py, vista.py, only.py)
    assert ours == {"var", "pai", "paint", "funnel", "vicrop"} | contrastive | same_forward
    assert set(registry.config_classes("input")) == {"funnel", "vicrop"}
    assert registry.lookup("PAINT").config is PAINTConfig
    with pytest.raises(KeyError, match="unknown method 'opera'; choose from: dola, funnel, "):
        registry.lookup("opera")
    with pytest.raises(TypeError, match="input-level"):
        registry.build_method(FunnelConfig())


def test_registry_refuses_a_taken_name():
    class OtherVAR:
        name = "VAR"

    with pytest.raises(ValueError, match=r"'var' is taken by VARConfig; .*OtherVAR needs another name"):
        registry.register_method(OtherVAR)(object)
    assert registry.lookup("var").config is VARConfig  # nothing replaced


def test_duplicate_configs_refused(load):
    model, proc = load("llava")
    for pair in ([VARConfig(), VARConfig(p=0.1)], [PAIConfig(), PAIConfig(alpha=0.1)]):
        with pytest.raises(ValueError, match=f"method '{pair[0].name}' given twice"):
            vlm_attn.apply(model, pair)
        assert getattr(model, "_vlm_attn_handle", None) is None
    with pytest.raises(ValueError, match="method 'pai' given twice"):
        vlm_attn.generate(model, proc, sample_image_path(), "Q?", methods=[PAIConfig(), PAIConfig()])


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the errors below must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("vlm_attn.loading.load_model", refuse)


def _cli_error(argv: list[str]) -> str:
    with pytest.raises((SystemExit, UserError)) as info:
        main(argv)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_help_lists_every_method(capsys):
    for argv in (["generate", "--help"], ["inspect", "--help"], ["eval", "pope", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        for name, entry in cli_methods().items():
            assert entry.config.description.split(":")[0] in " ".join(out.split()), (argv, name)
        for flag in ("--pai-alpha", "--paint-beta", "--var-p", "--p", "--funnel-anchor-layer", "--vicrop-bbox-size",
                     "--head-sensitivity", "--anchor-layer", "--funnel-fallback"):
            assert f"{flag} " in out or f"{flag}," in out, (argv, flag)


def test_flags_reach_the_configs():
    from vlm_attn.cli import make_parser
    from vlm_attn.commands.common import parse_method_args

    args = make_parser().parse_args(
        ["generate", "--method", "PAI", "--method", "paint", "--method", "ViCrop", "--pai-alpha", "0.3",
         "--no-pai-guidance", "--paint-layers", "3,2", "--head-sensitivity", "h.json", "--anchor-layer", "4",
         "--vicrop-ratios", "1,1.5"])
    spec = parse_method_args(args)
    pai, paint, vicrop = spec.configs
    assert spec.names == ("pai", "paint", "vicrop") and spec.input_config is vicrop
    assert pai == PAIConfig(alpha=0.3, guidance=False)
    assert paint == PAINTConfig(layers=(2, 3), head_sensitivity="h.json")
    assert vicrop == ViCropConfig(layer=4, ratios=(1.0, 1.5))
    args = make_parser().parse_args(["generate", "--method", "var", "--p", "0.25", "--var-sink-dims", "5,6"])
    assert parse_method_args(args).configs == (VARConfig(p=0.25, sink_dims=(5, 6)),)


@pytest.mark.parametrize("content, expected", [
    ('{"var": {"p": 0.5},\n', "is not valid JSON: Expecting .* at line 2 column 1"),
    ("[1, 2]", r"must hold a JSON object such as .*, got a list"),
    ('{"var": 3}', "the entry for 'var' must be an object of settings, got 3"),
    ('{"pai": {"alpha": 0.1}}', "has settings for 'pai' but --method pai is not selected"),
    ('{"var": {"q": 1}}', "VARConfig has no setting 'q'; known: p, rho"),
    ('{"var": {"p": "x"}}', r"VARConfig.p must be a number in \[0, 1\], got 'x' \(str\)"),
    ('{"opera": {}}', "names unknown method 'opera'; choose from: dola, funnel, icd, m3id, only, pai, paint, var, vcd, vicrop, vista"),
])
def test_bad_method_config(tmp_path, no_model, content, expected):
    path = tmp_path / "m.json"
    path.write_text(content)
    text = _cli_error(["generate", "--model", "tiny-llava", "--method", "var", "--method-config", str(path)])
    assert str(path) in text
    assert re.search(expected, text), text


@pytest.mark.parametrize("argv, expected", [
    (["--method", "var", "--method", "VAR"], "--method var given twice"),
    (["--method", "funnel", "--method", "vicrop"], "at most one input-level method"),
    (["--method", "foo"], "unknown method 'foo'; choose from: dola, funnel, icd, m3id, only, pai, paint, var, vcd, vicrop, vista"),
    (["--pai-alpha", "0.3"], "--pai-alpha is set but --method pai is not selected"),
    (["--method", "var", "--anchor-layer", "3"], "--anchor-layer is for funnel or vicrop"),
    (["--method", "pai", "--pai-cutoff", "0"], r"PAIConfig.cutoff must be a number in \(0, 1\]"),
])
def test_bad_method_flags(no_model, argv, expected):
    for command in (["generate"], ["inspect", "--out", "x.png"]):
        if command[0] == "inspect" and argv.count("--method") > 1:
            continue  # inspect takes one method
        text = _cli_error([*command, "--model", "tiny-llava", *argv])
        assert re.search(expected, text), text


def test_eval_checks_methods_before_data(tmp_path, no_model):
    text = _cli_error(["eval", "pope", "--model", "tiny-llava", "--method", "var", "--method", "var",
                       "--pope-file", str(tmp_path / "missing.jsonl"), "--coco-root", str(tmp_path),
                       "--out", str(tmp_path / "run")])
    assert "--method var given twice" in text
    assert not (tmp_path / "run").exists()


def test_case_insensitive_method_runs(tiny_cache, monkeypatch, capsys):
    monkeypatch.setenv("VLM_ATTN_CACHE", str(tiny_cache.parent / "cli_cache"))
    assert main(["generate", "--model", "tiny-llava", "--method", "PAI", "--pai-alpha", "0.3", "--no-pai-guidance",
                 "--max-new-tokens", "2", "--no-vanilla", "--json"]) == 0
    assert "== pai ==" in capsys.readouterr().out
