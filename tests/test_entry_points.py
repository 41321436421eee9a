"""Every entry point runs exactly the same method (issue 11 §1): one sample, one method, identical text everywhere.

For each method (VAR with the model's demo sink dims, PAI, PAINT, PAI without guidance, VAR + PAI + PAINT, the
Visual Funnel, ViCrop, and the same-forward baselines DoLa, VISTA, ONLY, VAR + VISTA) the same image and prompt go through `vlm_attn.generate`, `Handle.generate`,
`vlm_attn.steered_generate`, an unchanged `model.generate` with `handle.logits_processor(inputs)`, the CLI
`generate`, the evaluation runner on a one-sample list, `inspect --answer` and the pipeline helper, wherever the
entry point takes that method. All must give the same tokens. On the shipped toy model and tiny Qwen2-VL.

The matrix can fail: guidance changes the text of both models (`test_guidance_changes_the_text`), so an entry point
that drops it (as the eval runner once did) differs from `vlm_attn.generate`. The CLI `eval` run at the end checks
the same through `vlm-attn eval chair`, and that metrics.json records the guidance that ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import vlm_attn
from vlm_attn.cli import main
from vlm_attn.eval.runner import Sample, run_samples
from vlm_attn.loading import demo_settings, load_model, sample_image_path
from vlm_attn.pipelines import steered_pipeline
from vlm_attn.prompting import build_inputs
from vlm_attn.testing.tiny import load_tiny, tiny_path

NEW_TOKENS = 8  # enough for PAI/PAINT guidance to change the text on both models (checked below)
PROMPT = "Please describe this image in detail."
IMAGE = sample_image_path()
INPUT_LEVEL = ("funnel", "vicrop")
CONTRASTIVE = ("vcd", "icd", "m3id", "var+vcd")  # logits-level decoders: no attention picture for inspect
SAME_FORWARD = ("dola", "vista", "only")  # they edit logits, not attention: nothing for `inspect` to picture
METHODS = ("var", "pai", "paint", "pai_noguide", "var+pai+paint", "funnel", "vicrop", *CONTRASTIVE, *SAME_FORWARD,
           "var+vista")
# settings strong enough to change the 8 tokens of both test models (the defaults leave some unchanged)
VCD = {"alpha": 3.0, "noise_step": 999}
M3ID = {"lam": 0.5, "alpha": 1.0}
# method -> (CLI --method names, --method-config content)
CLI_METHODS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "var": (["var"], {}),
    "pai": (["pai"], {}),
    "paint": (["paint"], {}),
    "pai_noguide": (["pai"], {"pai": {"guidance": False}}),
    "var+pai+paint": (["var", "pai", "paint"], {}),
    "funnel": (["funnel"], {}),
    "vicrop": (["vicrop"], {}),
    "vcd": (["vcd"], {"vcd": VCD}),
    "icd": (["icd"], {}),
    "m3id": (["m3id"], {"m3id": M3ID}),
    "var+vcd": (["var", "vcd"], {"vcd": VCD}),
    "dola": (["dola"], {}),
    "vista": (["vista"], {"vista": {"strength": 0.5}}),
    "only": (["only"], {}),
    "var+vista": (["var", "vista"], {}),
}


def method_configs(method: str, model: Any) -> list[Any]:
    """Fresh configs of `method`, with the settings the CLI uses (VAR: the demo sink dims shipped beside the model)."""
    demo = demo_settings(model)
    assert demo is not None, "the test models ship demo VAR settings"

    def var() -> Any:
        return vlm_attn.VARConfig(sink_dims=tuple(demo["sink_dims"]), tau=demo["tau"])

    return {
        "var": lambda: [var()],
        "pai": lambda: [vlm_attn.PAIConfig()],
        "paint": lambda: [vlm_attn.PAINTConfig()],
        "pai_noguide": lambda: [vlm_attn.PAIConfig(guidance=False)],
        "var+pai+paint": lambda: [var(), vlm_attn.PAIConfig(), vlm_attn.PAINTConfig()],
        "funnel": lambda: [vlm_attn.FunnelConfig()],
        "vicrop": lambda: [vlm_attn.ViCropConfig()],
        "vcd": lambda: [vlm_attn.VCDConfig(**VCD)],
        "icd": lambda: [vlm_attn.ICDConfig()],
        "m3id": lambda: [vlm_attn.M3IDConfig(**M3ID)],
        "var+vcd": lambda: [var(), vlm_attn.VCDConfig(**VCD)],
        "dola": lambda: [vlm_attn.DoLaConfig()],
        "vista": lambda: [vlm_attn.VISTAConfig(strength=0.5)],
        "only": lambda: [vlm_attn.ONLYConfig()],
        "var+vista": lambda: [var(), vlm_attn.VISTAConfig()],
    }[method]()


class Subject:
    """One model under test: how to load it, and the CLI --model name plus the cache the CLI loads it from."""

    def __init__(self, name: str, model: Any, processor: Any, cli_model: str, cache: Path | None,
                 image: Path = IMAGE):
        self.name, self.model, self.processor, self.cli_model, self.cache = name, model, processor, cli_model, cache
        self.image = image

    def batch(self) -> Any:
        return build_inputs(self.processor, [self.image], [PROMPT]).to(self.model.device)

    def decode(self, out: torch.Tensor, prompt_len: int) -> str:
        return self.processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)[0].strip()


@pytest.fixture(scope="module", params=["toy-vlm", "qwen2_vl"])
def subject(request: pytest.FixtureRequest, tiny_cache: Path) -> Subject:
    """Each model is loaded once per module; the CLI loads its own copy of the same files."""
    if request.param == "toy-vlm":
        model, processor = load_model("toy-vlm")
        return Subject("toy-vlm", model, processor, "toy-vlm", None)
    cache = tiny_cache.parent / "cli_cache"  # shared with tests/test_cli.py: built once per session
    tiny_path(request.param, cache / "tiny")
    model, processor = load_tiny(request.param, cache / "tiny")
    return Subject(request.param, model, processor, f"tiny-{request.param}", cache)


# ------------------------------------------------------------------------------------------- entry points
def via_generate(s: Subject, method: str, tmp: Path) -> str:
    return vlm_attn.generate(s.model, s.processor, s.image, PROMPT, methods=method_configs(method, s.model),
                             max_new_tokens=NEW_TOKENS).text


def via_handle(s: Subject, method: str, tmp: Path) -> str:
    batch = s.batch()
    with vlm_attn.apply(s.model, method_configs(method, s.model), processor=s.processor) as handle:
        out = handle.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    return s.decode(out, batch["input_ids"].shape[1])


def via_steered_generate(s: Subject, method: str, tmp: Path) -> str:
    batch = s.batch()
    with vlm_attn.apply(s.model, method_configs(method, s.model), processor=s.processor):
        out = vlm_attn.steered_generate(s.model, **batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    return s.decode(out, batch["input_ids"].shape[1])


def via_model_generate(s: Subject, method: str, tmp: Path) -> str:
    batch = s.batch()
    with vlm_attn.apply(s.model, method_configs(method, s.model), processor=s.processor) as handle, torch.no_grad():
        out = s.model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False,
                               logits_processor=handle.logits_processor(batch))
    return s.decode(out, batch["input_ids"].shape[1])


def via_pipeline(s: Subject, method: str, tmp: Path) -> str:
    pipe = steered_pipeline(s.model, method_configs(method, s.model), processor=s.processor)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(s.image)},
                                             {"type": "text", "text": PROMPT}]}]
    try:
        out = pipe(text=messages, max_new_tokens=NEW_TOKENS, do_sample=False, return_full_text=False)
    finally:
        pipe.vlm_attn_handle.remove()
    return out[0]["generated_text"].strip()


def via_eval(s: Subject, method: str, tmp: Path) -> str:
    records = run_samples(s.model, s.processor, [Sample(id="0", prompt=PROMPT, image=s.image)], tmp / "run",
                          settings={"task": "test"}, configs=method_configs(method, s.model), batch_size=1,
                          max_new_tokens=NEW_TOKENS, progress=False)
    assert records is not None and "error" not in records[0], records
    return records[0]["output"]


def _cli(s: Subject, argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    if s.cache is not None:
        monkeypatch.setenv("VLM_ATTN_CACHE", str(s.cache))
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def _method_args(method: str, tmp: Path) -> list[str]:
    names, overrides = CLI_METHODS[method]
    args = [a for name in names for a in ("--method", name)]
    if overrides:
        path = tmp / "methods.json"
        path.write_text(json.dumps(overrides))
        args += ["--method-config", str(path)]
    return args


def via_cli(s: Subject, method: str, tmp: Path, capsys: Any, monkeypatch: Any) -> str:
    out = _cli(s, ["generate", "--model", s.cli_model, "--image", str(s.image), "--prompt", PROMPT,
                   "--max-new-tokens", str(NEW_TOKENS), "--no-vanilla", *_method_args(method, tmp)],
               capsys, monkeypatch)
    lines = out.splitlines()
    header = lines.index(f"== {' + '.join(CLI_METHODS[method][0])} ==")
    end = next(i for i in range(header + 1, len(lines)) if lines[i].startswith("== "))
    return "\n".join(lines[header + 1 : end]).strip()


def via_inspect(s: Subject, method: str, tmp: Path, capsys: Any, monkeypatch: Any) -> str:
    out = _cli(s, ["inspect", "--model", s.cli_model, "--image", str(s.image), "--prompt", PROMPT, "--answer",
                   "--json", "--max-new-tokens", str(NEW_TOKENS), "--out", str(tmp / "look.png"),
                   *_method_args(method, tmp)], capsys, monkeypatch)
    return json.loads(out[: out.rindex("\nwrote ")])["answer"]


ATTENTION_ONLY: dict[str, Callable[..., str]] = {
    "Handle.generate": via_handle, "steered_generate": via_steered_generate,
    "model.generate + logits_processor": via_model_generate, "pipeline": via_pipeline,
}
EVERY_METHOD: dict[str, Callable[..., str]] = {"vlm_attn.generate": via_generate, "eval runner": via_eval}
CLI_ENTRY_POINTS: dict[str, Callable[..., str]] = {"cli generate": via_cli, "cli inspect --answer": via_inspect}


@pytest.mark.parametrize("method", METHODS)
def test_every_entry_point_gives_the_same_text(subject: Subject, method: str, tmp_path: Path, capsys, monkeypatch):
    texts: dict[str, str] = {}
    for name, run in EVERY_METHOD.items():
        texts[name] = run(subject, method, tmp_path / name.replace(" ", "_"))
    if method not in INPUT_LEVEL:
        for name, run in ATTENTION_ONLY.items():
            texts[name] = run(subject, method, tmp_path)
    for name, run in CLI_ENTRY_POINTS.items():
        if name == "cli inspect --answer" and ("+" in method or method in CONTRASTIVE or method in SAME_FORWARD):
            continue  # inspect pictures one attention method at a time (refusals: test_contrastive, test_same_forward)
        texts[name] = run(subject, method, tmp_path, capsys, monkeypatch)
    assert not hasattr(subject.model, "_vlm_attn_handle"), "an entry point left its handle applied"
    reference = texts["vlm_attn.generate"]
    assert reference, "the reference generated no text"
    differing = {k: v for k, v in texts.items() if v != reference}
    assert not differing, f"{subject.name} / {method}: reference {reference!r}, differing entry points {differing}"


def test_guidance_changes_the_text(subject: Subject):
    """PAI and PAINT with their paper guidance give another text than without it, so the matrix sees a lost one."""
    def text(configs: list[Any]) -> str:
        return vlm_attn.generate(subject.model, subject.processor, IMAGE, PROMPT, methods=configs,
                                 max_new_tokens=NEW_TOKENS).text

    assert text([vlm_attn.PAIConfig()]) != text([vlm_attn.PAIConfig(guidance=False)])
    if subject.name == "toy-vlm":  # on tiny Qwen2-VL PAINT's guidance leaves these 8 tokens as they are
        assert text([vlm_attn.PAINTConfig()]) != text([vlm_attn.PAINTConfig(guidance=False)])


def _mini_coco(root: Path) -> Path:
    """A COCO val2014 layout holding the sample picture as image 1 (car, traffic light), for `eval chair`."""
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    name = "COCO_val2014_000000000001.jpg"
    (root / "val2014" / name).write_bytes(IMAGE.read_bytes())  # a PNG under a .jpg name: PIL reads the content
    images = [{"id": 1, "file_name": name, "width": 336, "height": 252}]
    categories = [{"id": 3, "name": "car"}, {"id": 10, "name": "traffic light"}]
    instances = [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0}
                 for i, c in enumerate((3, 10))]
    captions = [{"id": 1, "image_id": 1, "caption": "A car and a traffic light on a street."}]
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": instances, "categories": categories}))
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": captions}))
    return root


@pytest.mark.parametrize("guidance", [True, False])
def test_eval_chair_runs_and_records_the_guidance(guidance: bool, tmp_path: Path, capsys):
    """`vlm-attn eval chair --method pai` generates what `vlm_attn.generate` does and records what ran."""
    model, processor = load_model("toy-vlm")
    coco = _mini_coco(tmp_path / "coco")
    methods = tmp_path / "methods.json"
    methods.write_text(json.dumps({"pai": {"guidance": guidance}}))
    out = tmp_path / "run"
    assert main(["eval", "chair", "--model", "toy-vlm", "--method", "pai", "--method-config", str(methods),
                 "--coco-root", str(coco), "--out", str(out), "--max-new-tokens", str(NEW_TOKENS),
                 "--lemmatizer", "offline", "--no-progress"]) == 0
    output = json.loads((out / "samples.jsonl").read_text().splitlines()[0])["output"]
    guided = vlm_attn.generate(model, processor, IMAGE, PROMPT, methods=[vlm_attn.PAIConfig()],
                               max_new_tokens=NEW_TOKENS).text
    plain = vlm_attn.generate(model, processor, IMAGE, PROMPT, methods=[vlm_attn.PAIConfig(guidance=False)],
                              max_new_tokens=NEW_TOKENS).text
    assert guided != plain
    assert output == (guided if guidance else plain)
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    assert prov["generation"]["guidance"] == ({"gamma": 1.1, "cutoff": 0.1} if guidance else None)
    assert prov["methods"][0]["config"]["guidance"] is guidance
    assert json.loads((out / "run.json").read_text())["methods"][0]["config"]["guidance"] is guidance


def test_contrastive_decoders_change_the_text(subject: Subject):
    """Each contrastive decoder (with the matrix settings) changes the text, so the matrix sees a lost one."""
    def text(method: str | None) -> str:
        return vlm_attn.generate(subject.model, subject.processor, IMAGE, PROMPT, max_new_tokens=NEW_TOKENS,
                                 methods=method_configs(method, subject.model) if method else None).text

    vanilla = text(None)
    assert all(text(method) != vanilla for method in ("vcd", "icd", "m3id"))


def test_eval_samples_with_a_seed_and_records_it(tmp_path: Path, capsys):
    """`eval --method vcd --do-sample` draws the same tokens for the same seed, others for another, and records it."""
    coco = _mini_coco(tmp_path / "coco")

    def run(name: str, *extra: str) -> tuple[str, dict[str, Any]]:
        out = tmp_path / name
        assert main(["eval", "chair", "--model", "toy-vlm", "--method", "vcd", "--coco-root", str(coco),
                     "--out", str(out), "--max-new-tokens", "12", "--lemmatizer", "offline", "--no-progress",
                     "--do-sample", *extra]) == 0
        output = json.loads((out / "samples.jsonl").read_text().splitlines()[0])["output"]
        return output, json.loads((out / "metrics.json").read_text())["provenance"]

    first, prov = run("a", "--seed", "3", "--temperature", "1.5")
    again, _ = run("b", "--seed", "3", "--temperature", "1.5")
    other = {run(f"c{seed}", "--seed", str(seed), "--temperature", "1.5")[0] for seed in (4, 5)}
    assert first == again and other != {first}
    assert prov["generation"]["greedy"] is False
    assert {k: prov["generation"][k] for k in ("do_sample", "temperature", "top_p")} == \
        {"do_sample": True, "temperature": 1.5, "top_p": 1.0}
    assert json.loads((tmp_path / "a" / "run.json").read_text())["decoding"]["temperature"] == 1.5
    capsys.readouterr()
    for bad in (["--temperature", "0.5"], ["--do-sample", "--top-p", "0"], ["--do-sample", "--temperature", "-1"]):
        with pytest.raises(SystemExit) as info:
            main(["eval", "chair", "--model", "toy-vlm", "--coco-root", str(coco), "--out", str(tmp_path / "bad"),
                  *bad])
        assert info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: --"), lines  # names the flag, before any model
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------- pipeline, refusals
def _messages(image: Any, prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]


@pytest.mark.parametrize("method", ["pai", "icd", "vcd"])
def test_pipeline_guidance_is_per_call_and_batched(method: str, tmp_path: Path):
    """A left-padded pipeline batch of two prompts of different length gives each its guided single answer, twice
    (PAI's image-free branch, ICD's disturbed-prompt branch, VCD's noised-image branch)."""
    from .conftest import make_image

    model, processor = load_model("toy-vlm")
    other = tmp_path / "other.png"
    make_image(1, (96, 96)).save(other)
    samples = [(IMAGE, PROMPT), (other, "What is in the image?")]
    expected = [vlm_attn.generate(model, processor, im, pr, methods=method_configs(method, model),
                                  max_new_tokens=NEW_TOKENS).text for im, pr in samples]
    pipe = steered_pipeline(model, method_configs(method, model), processor=processor)
    try:
        for _ in range(2):  # the second call must not see the first call's guidance state
            batch = pipe(text=[_messages(str(im), pr) for im, pr in samples], batch_size=2,
                         max_new_tokens=NEW_TOKENS, return_full_text=False)
            assert [out[0]["generated_text"].strip() for out in batch] == expected
    finally:
        pipe.vlm_attn_handle.remove()
    assert processor.tokenizer.padding_side == "right"  # the caller's processor is left as it was


def test_guidance_refuses_what_it_cannot_run_before_generating():
    model, processor = load_model("toy-vlm")
    batch = build_inputs(processor, [IMAGE], [PROMPT])
    with vlm_attn.apply(model, vlm_attn.PAIConfig()) as handle:
        for extra in ({"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}):
            with pytest.raises(ValueError, match=f"{next(iter(extra))}=2: use greedy"):
                handle.generate(**batch, max_new_tokens=2, **extra)
        assert handle.engine.call is None  # nothing ran
    pipe = steered_pipeline(model, vlm_attn.PAIConfig(), processor=processor)
    try:
        with pytest.raises(ValueError, match="num_beams=2"):
            pipe(text=_messages(str(IMAGE), PROMPT), generate_kwargs={"num_beams": 2, "max_new_tokens": 2})
    finally:
        pipe.vlm_attn_handle.remove()
    # two configs asking for different guidance: one guidance pass could not honour both records
    with pytest.raises(ValueError, match="different ones.*guidance=False"):
        vlm_attn.apply(model, [vlm_attn.PAIConfig(), vlm_attn.PAINTConfig(gamma=2.0)])
    assert not hasattr(model, "_vlm_attn_handle")


def test_transparent_image_is_the_same_picture_everywhere(tmp_path: Path, capsys, monkeypatch):
    """An RGBA picture reaches the model composited over white through every entry point (paths and PIL alike)."""
    import numpy as np
    from PIL import Image

    from vlm_attn.prompting import load_image

    rng = np.random.RandomState(5)
    pixels = (rng.rand(90, 120, 4) * 255).astype("uint8")
    pixels[:45, :, 3] = 0  # the top half fully transparent: white once composited, its RGB noise if alpha is dropped
    rgba = Image.fromarray(pixels, "RGBA")
    path = tmp_path / "rgba.png"
    rgba.save(path)
    white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(white))
    assert np.array_equal(np.asarray(load_image(rgba)), np.asarray(white))

    model, processor = load_model("toy-vlm")
    subject = Subject("toy-vlm", model, processor, "toy-vlm", None, image=path)
    # transformers' pipeline opens image files itself and drops the alpha channel: it gets the PIL image instead
    plain_paths = {k: v for k, v in ATTENTION_ONLY.items() if k != "pipeline"}
    texts = {name: run(subject, "pai", tmp_path / name.replace(" ", "_")) for name, run in
             {**EVERY_METHOD, **plain_paths}.items()}
    pipe = steered_pipeline(model, vlm_attn.PAIConfig(), processor=processor)
    try:
        texts["pipeline, PIL image"] = pipe(text=_messages(rgba, PROMPT), max_new_tokens=NEW_TOKENS,
                                            return_full_text=False)[0]["generated_text"].strip()
    finally:
        pipe.vlm_attn_handle.remove()
    texts.update({name: run(subject, "pai", tmp_path, capsys, monkeypatch) for name, run in CLI_ENTRY_POINTS.items()})
    texts["PIL image"] = vlm_attn.generate(model, processor, rgba, PROMPT, methods=[vlm_attn.PAIConfig()],
                                           max_new_tokens=NEW_TOKENS).text
    assert len(set(texts.values())) == 1, {k: v for k, v in texts.items() if v != texts["vlm_attn.generate"]}


@pytest.mark.parametrize("method", SAME_FORWARD)
def test_eval_chair_runs_the_same_forward_methods(method: str, tmp_path: Path):
    """`vlm-attn eval chair --method dola|vista|only` generates what `vlm_attn.generate` does, and records it."""
    model, processor = load_model("toy-vlm")
    coco = _mini_coco(tmp_path / "coco")
    out = tmp_path / "run"
    assert main(["eval", "chair", "--model", "toy-vlm", "--method", method, "--coco-root", str(coco), "--out",
                 str(out), "--max-new-tokens", str(NEW_TOKENS), "--lemmatizer", "offline", "--no-progress"]) == 0
    output = json.loads((out / "samples.jsonl").read_text().splitlines()[0])["output"]
    config = {"dola": vlm_attn.DoLaConfig, "vista": vlm_attn.VISTAConfig, "only": vlm_attn.ONLYConfig}[method]()
    expected = vlm_attn.generate(model, processor, IMAGE, PROMPT, methods=[config], max_new_tokens=NEW_TOKENS).text
    plain = vlm_attn.generate(model, processor, IMAGE, PROMPT, max_new_tokens=NEW_TOKENS).text
    assert output == expected
    assert expected != plain  # the method changed the caption, so a run that dropped it would be caught
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    assert prov["methods"][0]["config"] == config.to_dict()
