"""Crash-safe, resumable, shardable batched generation for the evaluation tasks.

A run lives in one directory::

    run_dir/run.json               settings the run was started with (checked again on --resume)
    run_dir/samples.rank{i}.jsonl  one JSON line per finished sample of process i, appended and fsynced as it ends
    run_dir/samples.jsonl          all samples merged in sample order (written by the main process at the end)
    run_dir/.writer.rank{i}.lock   held (an OS file lock) by the process writing shard i; .pid names that process

Why this shape:
- every finished sample is on disk (flush + fsync) before the next batch starts, so killing a run loses at most
  the batch in flight; on ``resume`` the shard files are read back, a truncated last line (a kill during the write)
  is dropped, and finished ids are skipped, so no sample is lost or written twice;
- each process of an ``accelerate launch`` / ``torchrun`` job takes the slice ``samples[rank::world]``
  (``shard_samples``, a pure function) and appends only to its own shard file, so processes never share a file;
  after a barrier the main process merges the shards (de-duplicated by sample id) and scores;
- a sample whose image cannot be read is recorded as ``{"id", "error", ...}`` and the rest of its batch goes on;
  ``retry_errors`` (``--resume --retry-errors``) drops those records and generates the samples again;
- the process writing shard i holds an OS-level lock on ``.writer.rank{i}.lock`` (``filelock``): a second run on
  the same folder is refused instead of generating everything twice, and a killed run's lock dies with it;
- ``run.json`` keeps the settings that made the sample list (limit, seed, prompt, methods, ...); a resume with
  other values is refused naming the flag and both values.

The model is driven only through the public API: ``vlm_attn.apply`` for the methods and
``vlm_attn.prompting.build_inputs`` for left-padded batches; decoding is greedy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..errors import UserError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
MERGED_FILE = "samples.jsonl"
SHARD_PATTERN = "samples.rank{rank}.jsonl"
LOCK_PATTERN = ".writer.rank{rank}.lock"
OWNER_PATTERN = ".writer.rank{rank}.pid"
# Settings that must match when a run is resumed, and the flag that sets each (batch size, progress, the parse
# mode and the lemmatizer may change freely: they do not change what is generated).
RESUME_FLAGS: dict[str, str] = {
    "task": "the task", "model": "--model", "revision": "--revision", "dtype": "--dtype",
    "methods": "--method", "max_new_tokens": "--max-new-tokens", "prompt": "--prompt", "limit": "--limit",
    "seed": "--seed", "num_images": "--num-images", "image_list": "--image-list", "splits": "--splits",
    "samples_sha256": "the sample list",
}
RESUME_KEYS: tuple[str, ...] = tuple(RESUME_FLAGS)

ImageSource = str | os.PathLike | Callable[[], Any]


@dataclass(frozen=True)
class Decoding:
    """How the runner decodes: greedy (the default) or multinomial sampling with temperature and top-p.

    Sampling is reproducible: before each generate call torch is seeded from `seed` and the batch's sample ids
    (`seed_for`), so a run with the same samples and batch size draws the same tokens (VCD's and ICD's published
    protocols sample with temperature 1 and top-p 1).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"do_sample": False, "num_beams": 1}
        return {"do_sample": True, "num_beams": 1, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}

    def seed_for(self, ids: Sequence[str]) -> int:
        """The torch seed of one generate call on the samples `ids` (stable across runs and machines)."""
        digest = hashlib.sha256(json.dumps([self.seed, list(ids)]).encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") >> 1

    def record(self) -> dict[str, Any]:
        return {"do_sample": self.do_sample, "temperature": self.temperature, "top_p": self.top_p}


GREEDY = Decoding()


class RunDirError(UserError, RuntimeError):
    """The run directory cannot be used as asked (not empty without --resume, resumed with other settings, or
    being written by another run)."""


@dataclass(frozen=True)
class Sample:
    """One generation request.

    Attributes:
        id: unique, stable id (e.g. ``"42"`` for a CHAIR image, ``"random/17"`` for a POPE question); resuming and
            merging key on it.
        prompt: the user text (the chat template and image slot are added by ``build_inputs``).
        image: a path, or a zero-argument callable returning a PIL image (e.g. a dataset row decoded on demand).
        meta: JSON-ready fields copied into the sample's record (image id, split, label, ...).
    """

    id: str
    prompt: str
    image: ImageSource = field(compare=False)
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class DistContext:
    """Which process this is: ``rank`` of ``world``; ``barrier`` waits for every process (no-op when alone)."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context() -> DistContext:
    """The process layout of an ``accelerate launch`` / ``torchrun`` job (``WORLD_SIZE`` > 1), else one process.

    accelerate's ``PartialState`` sets up the process group (gloo on CPU, NCCL on GPUs) and gives the barrier and
    this process's device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world:
        raise RuntimeError(
            f"WORLD_SIZE is {world} but accelerate sees {state.num_processes} processes; launch with "
            "`accelerate launch --num_processes N ...` or `torchrun --nproc_per_node N ...`"
        )
    return DistContext(
        rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone,
        device=str(state.device),
    )


def shard_samples(samples: Sequence[Sample], rank: int, world: int) -> list[Sample]:
    """The slice ``samples[rank::world]`` that process ``rank`` of ``world`` generates."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got rank={rank} world={world}")
    return list(samples[rank::world])


def samples_sha256(samples: Iterable[Sample]) -> str:
    """Hash of the ordered sample ids and prompts: identifies the work list of a run."""
    digest = hashlib.sha256()
    for s in samples:
        digest.update(json.dumps([s.id, s.prompt]).encode() + b"\n")
    return digest.hexdigest()


def read_records(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """The JSON lines of a shard file; a missing file is empty.

    An unterminated or unparsable *last* line is what a kill during a write leaves: it is dropped (and, with
    ``repair``, cut from the file so that later appends start on a clean line). A bad line anywhere else means
    the file was damaged by something else, and raises ValueError.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete_end = raw.rfind(b"\n") + 1
    lines = raw[:complete_end].split(b"\n")[:-1] if complete_end else []
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines) and complete_end == len(raw):
                logger.warning("%s: dropping an unreadable last line (interrupted write)", path)
                complete_end -= len(line) + 1
                break
            raise ValueError(f"{path}:{number}: not a JSON line ({exc}); remove the damaged line to resume") from exc
    if complete_end < len(raw):
        logger.warning("%s: dropping %d bytes of an interrupted last line", path, len(raw) - complete_end)
        if repair:
            os.truncate(path, complete_end)
    return records


class JsonlWriter:
    """Appends one JSON object per line and makes it durable (flush + fsync) before returning."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunDir:
    """Files of one run directory (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def merged_file(self) -> Path:
        return self.path / MERGED_FILE

    def shard_file(self, rank: int) -> Path:
        return self.path / SHARD_PATTERN.format(rank=rank)

    def shard_files(self) -> list[Path]:
        """Every shard file present, whatever world size wrote it, in rank order."""
        found = self.path.glob(SHARD_PATTERN.format(rank="*"))
        return sorted(found, key=lambda p: int(p.name.split(".rank")[1].split(".")[0]))

    def check(self, settings: Mapping[str, Any], resume: bool) -> None:
        """Refuse a non-empty directory without ``resume``, and a resume whose settings differ from the run's."""
        existing = sorted(p.name for p in self.path.iterdir() if not p.name.startswith(".writer.")) \
            if self.path.is_dir() else []
        if not resume:
            if existing:
                shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
                raise RunDirError(
                    f"run directory {self.path} is not empty ({shown}); pass --resume to continue that run, "
                    "or choose a new --out"
                )
            return
        if not self.run_file.exists():
            if existing:
                raise RunDirError(f"cannot resume {self.path}: it holds files but no {RUN_FILE}; choose a new --out")
            return
        try:
            started = json.loads(self.run_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunDirError(f"cannot resume {self.path}: {self.run_file} is not valid JSON ({exc}); choose a new "
                              "--out") from None
        changed = settings_diff(started, settings)
        if changed:
            raise RunDirError(
                f"cannot resume {self.path} with different settings ({'; '.join(changed)}); rerun with the "
                "original flags or choose a new --out"
            )

    def prepare(self, settings: Mapping[str, Any], extra_files: Mapping[str, Any] | None = None) -> None:
        """Create the directory and write ``run.json`` (kept from the first start) and extra JSON files."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.run_file.exists():
            _write_json_atomic(self.run_file, dict(settings))
        for name, content in (extra_files or {}).items():
            if not (self.path / name).exists():
                _write_json_atomic(self.path / name, content)

    def finished(self) -> dict[str, dict[str, Any]]:
        """Sample id -> record over every shard file: the first record with an output, else the first error record
        (an interrupted last line is ignored)."""
        records: dict[str, dict[str, Any]] = {}
        for path in self.shard_files():
            for record in read_records(path):
                key = str(record["id"])
                if key not in records or ("error" in records[key] and "error" not in record):
                    records[key] = record
        return records

    def drop_errors(self, rank: int) -> int:
        """Remove the error records from shard ``rank`` (atomically: the file is rewritten and replaced); returns
        how many were removed. Used by ``--retry-errors`` before the samples are generated again."""
        path = self.shard_file(rank)
        records = read_records(path, repair=True)
        kept = [r for r in records if "error" not in r]
        if len(kept) < len(records):
            _write_jsonl_atomic(path, kept)
        return len(records) - len(kept)

    @contextlib.contextmanager
    def writer_lock(self, rank: int = 0) -> Iterator[None]:
        """Hold the OS-level lock of shard ``rank`` for the block; raise RunDirError when another process holds it.

        Re-entrant within a process (the CLI takes it before loading the model, ``run_samples`` again). The lock
        is released when the process ends in any way, so a killed run never blocks its ``--resume``.
        """
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK_PATTERN.format(rank=rank)), timeout=0, is_singleton=True)
        owner = self.path / OWNER_PATTERN.format(rank=rank)
        try:
            lock.acquire()
        except Timeout:
            holder = owner.read_text(encoding="utf-8").strip() if owner.is_file() else "another process"
            raise RunDirError(
                f"run folder {self.path} is being written by another run ({holder}, shard {rank}); wait for it to "
                "end or stop it, then --resume"
            ) from None
        try:
            if lock.lock_counter == 1:
                owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n", encoding="utf-8")
            yield
        finally:
            lock.release()

    def merge(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        """All records in sample order, written to ``samples.jsonl``; raises if a sample has no record."""
        finished = self.finished()
        missing = [s.id for s in samples if s.id not in finished]
        if missing:
            raise RuntimeError(
                f"{len(missing)} samples have no record in {self.path} (e.g. {missing[:5]}); rerun with --resume"
            )
        # The sample's current fields (e.g. a POPE label fixed before --resume) win over those recorded when it was
        # generated, so samples.jsonl agrees with the files the metrics are computed from.
        merged = [{**finished[s.id], **_json_ready(s.meta)} for s in samples]
        stale = sum(m != finished[s.id] for s, m in zip(samples, merged))
        if stale:
            logger.warning("%d records carry fields that changed since they were generated (e.g. a fixed label); "
                           "samples.jsonl has the current values", stale)
        _write_jsonl_atomic(self.merged_file, merged)
        return merged


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _method_diff(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[str]:
    """Differences of two ``method_records`` lists: the method names, else each config field that differs."""
    def names(records: Sequence[Mapping[str, Any]]) -> str:
        return "+".join(str(r.get("name")) for r in records) or "baseline"

    if [r.get("name") for r in old] != [r.get("name") for r in new]:
        return [f"--method: run has {names(old)}, now {names(new)}"]
    changes = []
    for was, now in zip(old, new):
        was_cfg, now_cfg = was.get("config"), now.get("config")
        if isinstance(was_cfg, Mapping) and isinstance(now_cfg, Mapping):
            for key in sorted(set(was_cfg) | set(now_cfg)):
                if was_cfg.get(key) != now_cfg.get(key):
                    changes.append(f"--method-config {was.get('name')}.{key}: run has {_short(was_cfg.get(key))}, "
                                   f"now {_short(now_cfg.get(key))}")
        elif was_cfg != now_cfg:
            changes.append(f"--method-config {was.get('name')}: run has {_short(was_cfg)}, now {_short(now_cfg)}")
    return changes


def settings_diff(started: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """What differs between a run's stored settings and a resume's, one entry per flag with both values.

    Only keys present on both sides are compared (``settings`` may be partial: the CLI checks before the model is
    loaded, without the model-dependent ones). The sample-list hash is reported only when no named flag explains
    it (then the question files or image list themselves changed).
    """
    changes: list[str] = []
    for key, flag in RESUME_FLAGS.items():
        if key not in settings or key not in started or started[key] == settings[key] or key == "samples_sha256":
            continue
        if key == "methods":
            changes += _method_diff(started[key], settings[key])
        else:
            changes.append(f"{flag}: run has {_short(started[key])}, now {_short(settings[key])}")
    sha = "samples_sha256"
    if not changes and sha in settings and sha in started and started[sha] != settings[sha]:
        changes.append("the sample list: its ids or prompts differ from the run's (the question files or the "
                       "image list changed since it started)")
    return changes


def _write_jsonl_atomic(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json_atomic(path: Path, content: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _batches(items: Sequence[Sample], size: int) -> Iterator[list[Sample]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _load(sample: Sample) -> Any:
    from ..prompting import load_image

    image = sample.image() if callable(sample.image) else sample.image
    return load_image(image)


def generate_batch(model: Any, processor: Any, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: int,
                   decoding: Decoding = GREEDY, ids: Sequence[str] = (),
                   method_kwargs: dict[str, Any] | None = None) -> list[str]:
    """Continuations of one left-padded batch (one image per prompt), special tokens removed; greedy unless
    `decoding` samples (then torch is seeded from its seed and the sample `ids` first), or a decoding method's
    search when `method_kwargs` (`vlm_attn.generation.batch_decoding_kwargs`) say so.

    Generates through `vlm_attn.steered_generate`, so the methods applied to `model` run as they do everywhere else
    (PAI / PAINT image-free guidance included).
    """
    import torch

    from ..api import steered_generate
    from ..prompting import build_inputs

    batch = build_inputs(processor, list(images), list(prompts))
    batch = batch.to(model.device, dtype=model.dtype)
    with torch.no_grad():
        if decoding.do_sample:
            torch.manual_seed(decoding.seed_for(ids))
        out = steered_generate(model, **batch, max_new_tokens=max_new_tokens,
                               **{**decoding.generate_kwargs(), **(method_kwargs or {})})
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_with_input_method(
    model: Any, processor: Any, image: Any, prompt: str, config: Any, max_new_tokens: int,
    decoding: Decoding = GREEDY, sample_id: str = "",
) -> dict[str, Any]:
    """One sample through an input-level method (Visual Funnel, ViCrop): the answer and what the method decided."""
    import torch

    from ..generation import generate

    if decoding.do_sample:
        torch.manual_seed(decoding.seed_for([sample_id]))
    result = generate(model, processor, image, prompt, methods=[config], max_new_tokens=max_new_tokens,
                      **decoding.generate_kwargs())
    decision = {k: v for k, v in result.to_dict().items() if k not in ("text", "attention", "maps")}
    return {"output": result.text, "decision": decision}


def generate_shard(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    run_dir: RunDir,
    dist: DistContext,
    batch_size: int,
    max_new_tokens: int,
    progress: bool = True,
    input_config: Any = None,
    retry_errors: bool = False,
    decoding: Decoding = GREEDY,
) -> int:
    """Generate this process's slice minus the samples already finished; returns how many were written.

    Images are loaded one by one so that an unreadable image becomes an error record and its batch goes on. With an
    input-level method (`input_config`), samples run one at a time: each gets its own crops. With ``retry_errors``
    the error records of this shard are removed first and every sample without an output is generated again.
    The shard's writer lock is held throughout.
    """
    with run_dir.writer_lock(dist.rank):
        return _generate_shard(model, processor, samples, run_dir, dist, batch_size, max_new_tokens, progress,
                               input_config, retry_errors, decoding)


def _generate_shard(
    model: Any, processor: Any, samples: Sequence[Sample], run_dir: RunDir, dist: DistContext, batch_size: int,
    max_new_tokens: int, progress: bool, input_config: Any, retry_errors: bool, decoding: Decoding = GREEDY,
) -> int:
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    shard_path = run_dir.shard_file(dist.rank)
    read_records(shard_path, repair=True)
    if retry_errors:
        dropped = run_dir.drop_errors(dist.rank)
        if dropped:
            logger.info("rank %d: retrying %d samples recorded as errors", dist.rank, dropped)
    done = {key for key, record in run_dir.finished().items() if not (retry_errors and "error" in record)}
    mine = shard_samples(samples, dist.rank, dist.world)
    todo = [s for s in mine if s.id not in done]
    if len(todo) < len(mine):
        logger.info("rank %d: %d of %d samples already finished", dist.rank, len(mine) - len(todo), len(mine))
    written = 0
    desc = "generating" if dist.world == 1 else f"generating (rank {dist.rank})"
    with JsonlWriter(shard_path) as writer, tqdm(
        total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="sample", disable=not progress,
        position=dist.rank, dynamic_ncols=True,
    ) as bar:
        for batch in _batches(todo, batch_size):
            ready: list[tuple[Sample, Any]] = []
            for sample in batch:
                try:
                    ready.append((sample, _load(sample)))
                except (OSError, ValueError) as exc:
                    logger.warning("sample %s: %s", sample.id, exc)
                    writer.write({"id": sample.id, **sample.meta, "error": f"{type(exc).__name__}: {exc}"})
                    written += 1
                    bar.update(1)
            for sample, result in _generate_isolating(model, processor, ready, max_new_tokens, input_config,
                                                      decoding):
                writer.write({"id": sample.id, **sample.meta, **result})
                written += 1
                bar.update(1)
    return written


def _generate_isolating(
    model: Any, processor: Any, ready: Sequence[tuple[Sample, Any]], max_new_tokens: int, input_config: Any = None,
    decoding: Decoding = GREEDY,
) -> list[tuple[Sample, dict[str, Any]]]:
    """``{"output": text}`` per sample of a batch; when the processor rejects the batch (ValueError, e.g. an image
    too small for it), the samples are retried one by one so only the offending one becomes ``{"error": ...}``."""
    from ..generation import batch_decoding_kwargs

    if not ready:
        return []
    method_kwargs = batch_decoding_kwargs(model, input_config)  # OPERA alone decodes whole batches
    if input_config is not None and method_kwargs is None:
        out = []
        for sample, image in ready:
            try:
                out.append((sample, generate_with_input_method(model, processor, image, sample.prompt, input_config,
                                                               max_new_tokens, decoding, sample.id)))
            except ValueError as exc:
                logger.warning("sample %s: %s", sample.id, exc)
                out.append((sample, {"error": f"{type(exc).__name__}: {exc}"}))
        return out
    try:
        texts = generate_batch(model, processor, [im for _, im in ready], [s.prompt for s, _ in ready],
                               max_new_tokens, decoding, [s.id for s, _ in ready], method_kwargs)
        return [(sample, {"output": text}) for (sample, _), text in zip(ready, texts)]
    except ValueError as exc:
        if len(ready) == 1:
            logger.warning("sample %s: %s", ready[0][0].id, exc)
            return [(ready[0][0], {"error": f"{type(exc).__name__}: {exc}"})]
        logger.warning("a batch of %d failed (%s); retrying its samples one by one", len(ready), exc)
        return [pair for item in ready
                for pair in _generate_isolating(model, processor, [item], max_new_tokens, input_config, decoding)]


def run_samples(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    run_dir: str | Path,
    settings: Mapping[str, Any],
    configs: Sequence[Any] = (),
    batch_size: int = 8,
    max_new_tokens: int = 64,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    dist: DistContext | None = None,
    extra_files: Mapping[str, Any] | None = None,
    retry_errors: bool = False,
    decoding: Decoding = GREEDY,
) -> list[dict[str, Any]] | None:
    """Generate every sample into ``run_dir`` (resumable, sharded) and return the merged records.

    ``settings`` is written to ``run.json`` (with ``samples_sha256`` and ``max_new_tokens`` added) and compared on
    ``resume``; ``extra_files`` (name -> JSON content, e.g. the image list) are written beside it. ``configs`` are
    method configs: attention methods are applied with ``vlm_attn.apply`` for the generation, and at most one
    input-level method (FunnelConfig / ViCropConfig) decides each sample's images through ``vlm_attn.generate``.
    ``retry_errors`` (with ``resume``) generates the samples recorded as errors again, replacing their records.
    ``decoding`` is greedy by default (`Decoding` for seeded sampling).
    Each process holds its shard's writer lock while it works (a second run on the folder is refused). Returns the
    records on the main process and None on the others (which only generate their slice).
    """
    import torch

    from ..api import apply
    from ..generation import split_methods

    check_unique_ids(samples)
    if retry_errors and not resume:
        raise UserError("--retry-errors re-runs the failed samples of an existing run: pass --resume too")
    dist = dist or DistContext()
    rd = RunDir(run_dir)
    full_settings = {**settings, "max_new_tokens": max_new_tokens, "samples_sha256": samples_sha256(samples)}
    full_settings = _json_ready(full_settings)  # as stored, so a resume compares equal
    with rd.writer_lock(dist.rank):
        rd.check(full_settings, resume)
        dist.barrier()  # every process has checked the directory before anyone writes to it
        if dist.is_main:
            rd.prepare(full_settings, extra_files)
        dist.barrier()
        torch.manual_seed(seed)
        input_config, attention_configs = split_methods(configs)
        with apply(model, attention_configs, processor=processor) if attention_configs else contextlib.nullcontext():
            generate_shard(model, processor, samples, rd, dist, batch_size, max_new_tokens, progress, input_config,
                           retry_errors, decoding)
        dist.barrier()
        return rd.merge(samples) if dist.is_main else None


def check_unique_ids(samples: Sequence[Sample], source: str = "the sample list") -> None:
    """Raise UserError naming the first id that occurs twice (resuming and merging key on the id)."""
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise UserError(f"{source}: sample id {sample.id!r} occurs twice; sample ids must be unique")
        seen.add(sample.id)
