"""The lmms-eval plugin (`lmms-eval --model vlm_attn`): a local toy POPE task through lmms-eval's own CLI gives, per
question, the answers and the metrics of `vlm-attn eval pope` on the same questions; bad model_args are one-line
errors raised before the model loads.

lmms-eval runs in the interpreter that can import it: this one, or `$LMMS_EVAL_PYTHON` (.ci/run builds a venv layered
over the test environment, so the packages lmms-eval brings do not change the rest of the suite); `vlm-attn eval` runs
in that same interpreter. The tests skip, naming the import error, when neither can import lmms-eval.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = Path(__file__).resolve().parent / "lmms_eval_task"
N_QUESTIONS = 12


def _lmms_python() -> str:
    candidates = [sys.executable, os.environ.get("LMMS_EVAL_PYTHON", "")]
    why = []
    for python in filter(None, candidates):
        ok = subprocess.run([python, "-c", "import lmms_eval.evaluator"], capture_output=True, text=True)
        if ok.returncode == 0:
            return python
        why.append(f"{python}: {(ok.stderr.strip().splitlines() or ['no output'])[-1]}")
    pytest.skip("lmms-eval cannot be imported (" + "; ".join(why) + "): pip install 'vlm-attn[lmms-eval]', or point "
                "LMMS_EVAL_PYTHON at an interpreter that has it, as .ci/run does")


@pytest.fixture(scope="module")
def lmms_python() -> str:
    return _lmms_python()


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_toy_coco", ROOT / "scripts" / "make_toy_coco.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_toy_coco(tmp_path_factory.mktemp("toy"), n_train=20, n_val=4, seed=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Offline env whose PYTHONPATH has this checkout and a dist-info declaring pyproject's lmms_eval.models entry
    point (what `pip install vlm-attn` writes), so lmms-eval finds `--model vlm_attn` through its entry points."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    points = meta["project"]["entry-points"]["lmms_eval.models"]
    site = tmp_path_factory.mktemp("site")
    info = site / "vlm_attn_lmms_plugin-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vlm-attn-lmms-plugin\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[lmms_eval.models]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    path = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(site / "datasets"), "OMP_NUM_THREADS": "1",
            "VLM_ATTN_CACHE": os.environ.get("VLM_ATTN_CACHE", str(site / "cache"))}


@pytest.fixture(scope="module")
def task(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The task folder of scripts/lmms_eval_toy_pope.py: `toy_pope_random` over the first questions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lmms_eval_toy_pope", ROOT / "scripts" / "lmms_eval_toy_pope.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("task")
    assert module.write_tasks(toy_data, folder, ["random"], N_QUESTIONS) == ["toy_pope_random"]
    return folder


def _vlm_attn_eval(python: str, toy_data: Path, out: Path, env: dict[str, str], *methods: str) -> tuple[list[str], dict]:
    """`vlm-attn eval pope` in lmms-eval's interpreter: same packages (lmms-eval brings torchvision, which changes
    the image processor transformers picks), so any difference is the plugin's."""
    cmd = [python, "-m", "vlm_attn.cli", "eval", "pope", "--model", "toy-vlm", "--coco-root", str(toy_data),
           "--pope-dir", str(toy_data / "pope"), "--splits", "random", "--limit", str(N_QUESTIONS),
           "--max-new-tokens", "4", "--prompt", "{question}", "--batch-size", "5", "--no-progress", "--out", str(out),
           *methods]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return [r["output"] for r in records], json.loads((out / "metrics.json").read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lmms_eval(python: str, task: Path, out: Path, env: dict[str, str], model_args: str, processes: int = 1
               ) -> tuple[list[str], dict, dict]:
    """lmms-eval's CLI; with processes > 1 under `accelerate launch` on CPU (gloo), as lmms-eval runs on GPUs."""
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
              "--dynamo_backend", "no"] if processes > 1 else []
    env = {**env, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""} if processes > 1 else env
    cmd = [python, *launch, "-m", "lmms_eval", "--model", "vlm_attn", "--model_args", model_args, "--tasks", "toy_pope_random",
           "--include_path", str(task), "--batch_size", "5", "--output_path", str(out), "--log_samples"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    results = glob.glob(str(out / "*" / "*_results.json"))
    assert done.returncode == 0 and results, (done.stdout + done.stderr)[-3000:]
    samples = [json.loads(line) for line in Path(glob.glob(str(out / "*" / "*_samples_toy_pope_random.jsonl"))[0])
               .read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    result = json.loads(Path(results[0]).read_text())
    records = glob.glob(str(Path(results[0]).parent / "*_vlm_attn.json"))  # the plugin's record, beside results
    assert len(records) == 1, records
    answers = [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0] for s in samples]
    return answers, result, json.loads(Path(records[0]).read_text())


# ICD stands for the second-branch decoders (VCD and M3ID share its branch; ICD also needs the processor); each
# case is a whole lmms-eval CLI run (20-30 s), so the list is kept short.
@pytest.mark.parametrize("methods,processes", [((), 1), (("pai",), 2), (("icd",), 1), (("funnel",), 1)],
                         ids=["baseline", "pai-2-processes", "icd", "funnel"])
def test_lmms_eval_matches_vlm_attn_eval(methods, processes, lmms_python, toy_data, task, env, tmp_path):
    """Same answers per question and same metrics as one `vlm-attn eval` process: baseline, a second-branch method
    (PAI with its image-free guidance) under a 2-process accelerate launch (lmms-eval shards the documents and
    gathers them), a contrastive one on the same second-branch mechanism (VCD) and an input-level one (Visual
    Funnel); the record beside lmms-eval's results holds the vlm-attn
    version and the resolved method configs, as `vlm-attn eval`'s metrics.json does."""
    import vlm_attn

    flags = [f for m in methods for f in ("--method", m)]
    want_answers, want = _vlm_attn_eval(lmms_python, toy_data, tmp_path / "vlm", env, *flags)
    args = "pretrained=toy-vlm" + (f",methods={'+'.join(methods)}" if methods else "")
    answers, result, record = _lmms_eval(lmms_python, task, tmp_path / "lmms", env, args, processes)
    assert len(answers) == N_QUESTIONS
    assert answers == want_answers
    got = result["results"]["toy_pope_random"]
    for name in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert got[f"{name},none"] == pytest.approx(want["metrics"]["random"][name], abs=1e-12), name
    assert result["config"]["model_args"] == args  # lmms-eval's own record of the model_args
    provenance = want["provenance"]
    assert record["vlm_attn_version"] == vlm_attn.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", record["versions"]["lmms-eval"])  # results.json has only its git id
    assert {k: v for k, v in record["versions"].items() if k != "lmms-eval"} == provenance["versions"]
    assert record["methods"] == provenance["methods"]
    assert [m["name"] for m in record["methods"]] == list(methods)
    assert record["model"] == provenance["model"]
    assert record["generation"]["guidance"] == provenance["generation"]["guidance"]
    assert (record["generation"]["guidance"] is not None) == (methods == ("pai",))
    assert record["world_size"] == processes


ERRORS = """
import json, os, sys
from accelerate import PartialState
from lmms_eval.models import get_model
from vlm_attn.errors import UserError
cls = get_model("vlm_attn")
cases = json.loads(sys.argv[1])
out = {}
def attempt(case, args):
    try:
        cls.create_from_arg_string(args, {"batch_size": 1})
        out[case] = None
    except Exception as exc:  # [a vlm-attn UserError?, the line lmms-eval shows]
        out[case] = [isinstance(exc, UserError), f"{type(exc).__name__}: {exc}"]
for case, args in cases.items():
    attempt(case, args)
# lmms-eval's CLI set up accelerate as one process (no GPU, no ACCELERATE_USE_CPU) but the launch has two
PartialState()
os.environ["WORLD_SIZE"] = "2"
attempt("cpu launch without ACCELERATE_USE_CPU", "pretrained=toy-vlm")
print(json.dumps(out))
"""


def test_bad_model_args_are_one_line_errors(lmms_python, env, tmp_path):
    bad_config = tmp_path / "cfg.json"
    bad_config.write_text(json.dumps({"var": {"p": 3}}))
    cases = {
        "unknown method": "pretrained=toy-vlm,methods=var+nope",
        "bad setting": "pretrained=toy-vlm,methods=var,var_p=7",
        "bad setting in file": f"pretrained=toy-vlm,methods=var,method_config={bad_config}",
        "unknown setting": "pretrained=toy-vlm,methods=var,var_nope=1",
        "setting of an unselected method": "pretrained=toy-vlm,methods=var,pai_alpha=0.5",
        "unsupported family": "pretrained=tiny-bert",
        "two input methods": "pretrained=toy-vlm,methods=funnel+vicrop",
    }
    done = subprocess.run([lmms_python, "-c", ERRORS, json.dumps(cases)], env={**env, "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(got) == {*cases, "cpu launch without ACCELERATE_USE_CPU"}
    for case, result in got.items():
        assert result is not None, f"{case}: accepted"
        assert result[0] and "\n" not in result[1], f"{case}: {result}"  # a one-line UserError
    got = {case: message for case, (_, message) in got.items()}
    assert "unknown method 'nope'; choose from:" in got["unknown method"]
    assert "VARConfig.p must be a number in [0, 1], got 7.0" in got["bad setting"]
    assert "--method-config" in got["bad setting in file"]
    assert "unrecognized arguments: --var-nope" in got["unknown setting"]
    assert "--pai-alpha is set but --method pai is not selected" in got["setting of an unselected method"]
    assert "no tiny model for 'bert'; choose tiny-<family> with family one of" in got["unsupported family"]
    assert "at most one input-level method" in got["two input methods"]
    assert got["cpu launch without ACCELERATE_USE_CPU"].startswith(
        "UserError: lmms-eval model vlm_attn: WORLD_SIZE is 2 but accelerate sees 1 processes")
    assert "set ACCELERATE_USE_CPU=1 too" in got["cpu launch without ACCELERATE_USE_CPU"]


SCORING = """
import json, sys
import torch
from PIL import Image
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from vlm_attn.errors import UserError
from vlm_attn.prompting import build_inputs
cls = get_model("vlm_attn")
docs = json.loads(sys.argv[1])
CAPTION = "Please describe this image in detail."
visual = lambda doc: [Image.open(doc["image_path"]).convert("RGB")]
def req(kind, args):
    return Instance(kind, args, 0, metadata={"task": "t", "doc_id": args[3], "repeats": 1})
def one_forward(lm, doc, text):  # log p(text | caption prompt) from one uncached forward over prompt + text
    batch = build_inputs(lm.processor, visual(doc), [CAPTION])
    target = lm.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([batch["input_ids"], target], dim=1)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits.float()
    n = target.shape[1]
    return float(torch.log_softmax(logits[0, -n - 1:-1], -1).gather(1, target[0][:, None]).sum())
out = {}
for name, args in {"baseline": "pretrained=toy-vlm", "pai": "pretrained=toy-vlm,methods=pai,pai_guidance=false",
                   "pai guidance": "pretrained=toy-vlm,methods=pai", "vcd": "pretrained=toy-vlm,methods=vcd"}.items():
    lm = cls.create_from_arg_string(args, {"batch_size": 2})
    lm.task_dict = {"t": {"test": docs}}
    answers = lm.generate_until([req("generate_until", (d["question"], {"max_new_tokens": 1}, visual, i, "t", "test"))
                                 for i, d in enumerate(docs)])
    captions = lm.generate_until([req("generate_until", (CAPTION, {"max_new_tokens": 5}, visual, i, "t", "test"))
                                  for i, d in enumerate(docs)])
    other = ["no" if a == "yes" else "yes" for a in answers]
    try:
        scores = lm.loglikelihood([req("loglikelihood", (d["question"], c, visual, i, "t", "test"))
                                   for i, d in enumerate(docs) for c in (answers[i], other[i])])
        caption_scores = lm.loglikelihood([req("loglikelihood", (CAPTION, c, visual, i, "t", "test"))
                                           for i, c in enumerate(captions)])
    except UserError as exc:
        scores = caption_scores = str(exc)
    uncached = [one_forward(lm, d, c) for d, c in zip(docs, captions)] if name == "baseline" else None
    try:
        lm.generate_until([req("generate_until", (docs[0]["question"], {"do_sample": True}, visual, 0, "t", "test"))])
        sampling = None
    except UserError as exc:
        sampling = str(exc)
    out[name] = {"answers": answers, "scores": scores, "captions": captions, "caption_scores": caption_scores,
                 "uncached": uncached, "sampling": sampling}
print(json.dumps(out))
"""


def test_loglikelihood_scores_the_greedy_answer_with_methods_applied(lmms_python, toy_data, env):
    """`loglikelihood` (lmms-eval's multiple-choice tasks) scores a continuation as generation produces it: the
    yes/no answer and the 5-token caption that `generate_until` gives are the greedy continuations (with PAI too,
    whose steering acts on each decode step's row) and the other answer scores lower; without methods the cached
    step-by-step score equals one uncached forward; PAI changes the scores; guidance, VCD and sampling are
    refused."""
    rows = [json.loads(line) for line in (toy_data / "pope" / "coco_pope_random.jsonl").read_text().splitlines()][:4]
    docs = [{"question": r["text"], "image_path": str(toy_data / "val2014" / r["image"])} for r in rows]
    done = subprocess.run([lmms_python, "-c", SCORING, json.dumps(docs)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("baseline", "pai"):
        answers, scores = got[name]["answers"], got[name]["scores"]
        assert set(answers) <= {"yes", "no"}, answers
        assert len(scores) == 2 * len(docs)
        for i in range(len(docs)):
            (mine, greedy), (theirs, other_greedy) = scores[2 * i], scores[2 * i + 1]
            assert greedy and not other_greedy and theirs < mine < 0, (name, i, scores)
        assert all(len(c.split()) >= 3 for c in got[name]["captions"]), got[name]["captions"]
        assert all(greedy and logprob < 0 for logprob, greedy in got[name]["caption_scores"]), (name, got[name])
    base = got["baseline"]
    assert [lp for lp, _ in base["caption_scores"]] == pytest.approx(base["uncached"], abs=1e-4)  # cache = no cache
    assert got["pai"]["caption_scores"] != base["caption_scores"]  # PAI's steering acts on the scoring steps
    assert got["pai"]["scores"] != base["scores"]
    for name in ("pai guidance", "vcd"):  # second-branch decoders act on generation only
        assert "image-free guidance" in got[name]["scores"] and "_guidance=false" in got[name]["scores"]
        assert "contrastive decoders (vcd, icd, m3id)" in got[name]["scores"]
        assert set(got[name]["answers"]) <= {"yes", "no"}, got[name]["answers"]  # they do generate
    for name in got:
        assert "decodes greedily" in got[name]["sampling"] and "temperature=0" in got[name]["sampling"]
