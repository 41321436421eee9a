"""lmms-eval plugin: `lmms-eval --model vlm_attn --model_args pretrained=...,methods=var+pai,method_config=cfg.json`.

lmms-eval finds the model through the entry point `vlm_attn = vlm_attn.integrations.lmms_eval:manifest` (group
`lmms_eval.models`, installed with `pip install "vlm-attn[lmms-eval]"`). Methods are parsed and checked exactly as
`vlm-attn eval` does (the same `--method` / `--method-config` / `--<method>-<setting>` rules), every problem is a
one-line `UserError` raised before the model loads, and answers come from the eval runner's own batch function
(`vlm_attn.eval.runner.generate_batch` -> `vlm_attn.steered_generate`) or, for Funnel / ViCrop, its per-sample
input-method function, so a task gives the same answers here as under `vlm-attn eval`.

model_args: `pretrained` (hub id, local dir, `toy-vlm` or `tiny-<family>`), `methods` ("+"-separated),
`method_config` (JSON file as for `--method-config`), `<method>_<setting>=V` (as `--<method>-<setting> V`),
`device`, `dtype`, `revision`, `max_new_tokens` (default when a task sets none), `record` (where the run record goes:
vlm-attn and package versions, model, resolved method configs; by default `<UTC time>_vlm_attn.json` beside
lmms-eval's `*_results.json`, which itself keeps the model_args string; `record=none` writes none). The batch size
is lmms-eval's `--batch_size`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm.auto import tqdm

from ..errors import UserError

logger = logging.getLogger(__name__)

MODEL_ID = "vlm_attn"


def manifest() -> ModelManifest:
    """The `lmms_eval.models` entry point: lmms-eval's name for this plugin and the class it loads."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VlmAttn")


class _Parser(argparse.ArgumentParser):
    """The `vlm-attn eval` method flags; a bad one is a one-line UserError naming the model_args key."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"lmms-eval model_args: {message}; settings are <method>_<setting>=V, e.g. var_p=0.6 "
                        "(see `vlm-attn eval pope --help`)")


def method_argv(methods: str, method_config: str | None, settings: dict[str, Any]) -> list[str]:
    """model_args -> the `vlm-attn eval` method flags: methods=var+pai -> --method var --method pai, ..."""
    argv: list[str] = []
    for name in [m.strip() for m in str(methods or "").split("+") if m.strip()]:
        argv += ["--method", name]
    if method_config:
        argv += ["--method-config", str(method_config)]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def parse_methods(methods: str, method_config: str | None, settings: dict[str, Any]) -> Any:
    """The checked `MethodSpec` of these model_args (unknown method, setting or value -> one-line UserError)."""
    from ..commands.checks import check_method_files
    from ..commands.common import add_method_args, parse_method_args

    parser = _Parser(prog="vlm_attn", add_help=False)
    add_method_args(parser, vqa=False)
    args = parser.parse_args(method_argv(methods, method_config, settings))
    spec = parse_method_args(args)
    check_method_files(spec.configs)
    return spec


def _positive(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise UserError(f"lmms-eval model_args: {name}={value!r} must be a positive whole number, e.g. {name}=8")
    return number


def run_record(model: Any, model_id: str, revision: str | None, configs: Sequence[Any], batch_size: int,
               world_size: int = 1) -> dict[str, Any]:
    """How this lmms-eval run was made, in `vlm-attn eval`'s metrics.json terms: vlm-attn / lmms-eval / torch /
    transformers versions, the model, the resolved method configs (method_config file and settings applied), the
    guidance that runs and the command line."""
    from .. import __version__
    from ..eval.tasks import guidance_record, method_records, model_record, package_versions

    return {
        "vlm_attn_version": __version__,
        "versions": {**package_versions(), "lmms-eval": metadata.version("lmms-eval")},
        "model": model_record(model, model_id, revision),
        "methods": method_records(configs),
        "generation": {"greedy": True, "batch_size": batch_size, "padding_side": "left",
                       "guidance": guidance_record(configs)},
        "world_size": world_size,
        "command": list(sys.argv),
    }


def record_path(record: str | None, pretrained: str, argv: Sequence[str] | None = None) -> Path | None:
    """Where the run record goes: `record=PATH`; by default next to lmms-eval's results
    (`<--output_path>/<model folder>/<UTC time>_vlm_attn.json`, the folder lmms-eval names after `pretrained`);
    nowhere for `record=none` or when lmms-eval writes no files (no `--output_path`)."""
    if record is not None:
        return None if str(record).lower() in ("", "none", "false") else Path(record)
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--output_path")
    output = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))[0].output_path
    if not output:
        return None
    from lmms_eval.utils import sanitize_model_name

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    return Path(output) / sanitize_model_name(pretrained) / f"{stamp}_vlm_attn.json"


def _process_layout() -> Any:
    """Rank and process count of lmms-eval's launch (`accelerate launch -m lmms_eval`), as `vlm-attn eval` reads them.

    lmms-eval's CLI sets up accelerate before the model: on a machine without GPUs that setup is one process unless
    ACCELERATE_USE_CPU=1, so a mismatch with WORLD_SIZE is refused with that fix.
    """
    from ..eval.runner import distributed_context

    try:
        return distributed_context()
    except RuntimeError as exc:
        import torch

        hint = "" if torch.cuda.is_available() else (
            "; without GPUs set ACCELERATE_USE_CPU=1 too: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes 2 -m lmms_eval --model vlm_attn ...")
        raise UserError(f"lmms-eval model vlm_attn: {exc}{hint}") from exc


class VlmAttn(lmms):
    """An lmms-eval model: any family vlm-attn supports, with any vlm-attn methods applied, batched."""

    def __init__(self, pretrained: str, methods: str = "", method_config: str | None = None, device: str | None = None,
                 dtype: str | None = None, revision: str | None = None, batch_size: int | str = 8,
                 max_new_tokens: int | str = 128, record: str | None = None, max_batch_size: Any = None,
                 **settings: Any) -> None:
        super().__init__()
        from ..commands.checks import check_against_model, check_device, check_dtype, check_model_name
        from ..commands.common import build_configs
        from ..loading import load_model

        self.batch_size_per_gpu = _positive("batch_size", batch_size)
        self.max_new_tokens = _positive("max_new_tokens", max_new_tokens)
        check_model_name(str(pretrained))
        check_device(device)
        check_dtype(dtype)
        spec = parse_methods(methods, method_config, settings)  # before the model loads
        dist = _process_layout()  # lmms-eval's accelerate launch: one slice of the documents per process
        self._rank, self._world_size = dist.rank, dist.world
        hub = {"revision": revision} if revision else {}
        self.model, self.processor = load_model(str(pretrained), device=device or dist.device, dtype=dtype, **hub)
        configs = build_configs(spec, self.model)
        check_against_model([*configs, spec.input_config], self.model, self.processor)
        self.attention_configs, self.input_config = configs, spec.input_config
        self.vlm_attn_record = run_record(self.model, str(pretrained), revision, [*configs, *(
            [spec.input_config] if spec.input_config is not None else [])], self.batch_size_per_gpu, dist.world)
        logger.info("vlm-attn run: %s", self.vlm_attn_record)
        path = record_path(record, str(pretrained))
        if path is not None and self._rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.vlm_attn_record, indent=1, default=str) + "\n", encoding="utf-8")
            logger.info("vlm-attn record written to %s", path)

    @property
    def device(self) -> Any:
        return self.model.device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _request(self, request: Instance, n_args: int) -> tuple[Any, ...]:
        return tuple(request.args[:n_args])

    def _image(self, request: Instance, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> Any:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) != 1:
            raise UserError(f"task {task}: document {doc_id} has {len(visuals)} images; the vlm_attn model runs "
                            "one image per question (as vlm-attn eval does): use a single-image task")
        return visuals[0]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, in request order, batched as `vlm-attn eval` batches them (left-padded).

        `max_new_tokens` comes from the task's generation kwargs (else the model_args default); the answer is cut
        at the task's first `until` string. Sampling settings are refused: vlm-attn's eval decodes greedily.
        """
        import torch

        from ..api import apply
        from ..eval.runner import generate_batch, generate_with_input_method
        from ..generation import batch_decoding_kwargs

        work = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = self._request(request, 6)
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0) or 0) > 0:
                raise UserError(f"task {task} asks for sampling (do_sample/temperature > 0); the vlm_attn model "
                                "decodes greedily (vlm-attn eval --do-sample is not wired into the plugin): pass --gen_kwargs temperature=0")
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            tokens = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
            work.append((context, self._image(request, doc_to_visual, doc_id, task, split), tokens, until))
        answers: list[str] = [""] * len(work)
        chunks = []  # consecutive requests with one max_new_tokens, batch_size at most
        for i, item in enumerate(work):
            if chunks and len(chunks[-1]) < self.batch_size_per_gpu and work[chunks[-1][0]][2] == item[2]:
                chunks[-1].append(i)
            else:
                chunks.append([i])
        torch.manual_seed(0)  # vlm-attn eval's default seed (greedy decoding does not draw; kept for equality)
        configs = self.attention_configs
        with apply(self.model, configs, processor=self.processor) if configs else contextlib.nullcontext(), tqdm(
            total=len(work), desc="vlm_attn", disable=self._rank != 0
        ) as bar:
            for chunk in chunks:
                tokens = work[chunk[0]][2]
                method_kwargs = batch_decoding_kwargs(self.model, self.input_config)  # OPERA alone: batched
                if self.input_config is not None and method_kwargs is None:
                    texts = [generate_with_input_method(self.model, self.processor, work[i][1], work[i][0],
                                                        self.input_config, tokens)["output"] for i in chunk]
                else:
                    texts = generate_batch(self.model, self.processor, [work[i][1] for i in chunk],
                                           [work[i][0] for i in chunk], tokens, method_kwargs=method_kwargs)
                for i, text in zip(chunk, texts):
                    for stop in work[i][3]:
                        if stop and stop in text:
                            text = text.split(stop)[0]
                    answers[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args[:2], text)
                bar.update(len(chunk))
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation | image, context), whether it is the greedy continuation) with the methods applied.

        Scored as generation would produce it: a prefill over the chat-formatted prompt, then one cached step per
        continuation token, so methods that steer the current token's row (PAI, PAINT, VAR's decode-time sinks)
        act on every scored position exactly as when the model generates that continuation. Image-free guidance
        and input-level methods act on generation only, so those are refused here with the fix.
        """
        import torch

        from ..api import apply, guidance_settings
        from ..passes.branch import contrast_configs
        from ..prompting import build_inputs

        contrast = [type(c).__name__ for c in contrast_configs(self.attention_configs) if c.active]
        if self.input_config is not None or guidance_settings(self.attention_configs) is not None or contrast:
            raise UserError("loglikelihood tasks score fixed answers: image-free guidance (PAI/PAINT guidance), "
                            "contrastive decoders (vcd, icd, m3id) and input-level methods (funnel, vicrop) act on "
                            "generation only; set <method>_guidance=false and drop vcd/icd/m3id and funnel/vicrop "
                            "for this task")
        tokenizer = self.processor.tokenizer
        out: list[tuple[float, bool]] = []
        configs = self.attention_configs
        steered = apply(self.model, configs, processor=self.processor) if configs else contextlib.nullcontext()
        with steered, torch.no_grad():
            for request in tqdm(requests, desc="vlm_attn loglikelihood", disable=self._rank != 0):
                context, doc_to_target, doc_to_visual, doc_id, task, split = self._request(request, 6)
                doc = self.task_dict[task][split][doc_id]
                continuation = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
                image = self._image(request, doc_to_visual, doc_id, task, split)
                batch = build_inputs(self.processor, [image], [context]).to(self.model.device, dtype=self.model.dtype)
                target = tokenizer(str(continuation), add_special_tokens=False, return_tensors="pt")["input_ids"]
                target = target[0].to(self.model.device)
                step = self.model(**batch, use_cache=True)
                logits, mask, position = [step.logits[0, -1]], batch["attention_mask"], batch["input_ids"].shape[1]
                for token in target[:-1]:  # teacher-forced decode steps, as generate would run them
                    mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
                    step = self.model(input_ids=token.view(1, 1), attention_mask=mask, use_cache=True,
                                      past_key_values=step.past_key_values,
                                      cache_position=torch.tensor([position], device=mask.device))
                    logits.append(step.logits[0, -1])
                    position += 1
                scores = torch.log_softmax(torch.stack(logits).float(), dim=-1)
                logprob = float(scores.gather(1, target[:, None]).sum())
                greedy = bool((scores.argmax(-1) == target).all())
                out.append((logprob, greedy))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise UserError("multi-round tasks are not supported by the vlm_attn model: run single-turn tasks")
