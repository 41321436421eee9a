"""OPERA's cost against vanilla beam search and greedy decoding, in one run (issue 15's benchmark).

Same benchmark model and prompt as scripts/bench_overhead.py (LLaVA-shaped random model: language model hidden 1024,
8 layers, 16 heads; 576 image tokens, a ~600-token prompt). Variants, each generating exactly --new-tokens tokens
(min_new_tokens):

- greedy        num_beams=1 (reference of the second ratio column)
- beam5         transformers' beam search, 5 beams (reference of the first ratio column; goal: OPERA <= 2.0x)
- opera5        OPERA, official defaults (5 beams, 5 candidates, rollback on)
- opera5_n1     OPERA's "efficient" setting in its README: 1 attention candidate
- opera5_rb     opera5 with a rollback injected every ROLLBACK_EVERY steps, ROLLBACK_BACK tokens back: what rollbacks
                cost (the random benchmark model never triggers one: its summary location is always the newest token)

Each variant lives in its own process (so that its peak memory is its own) holding its own copy of the model; after
one warm-up call each, the calls alternate between the variants, round after round (`--repeats` rounds), so that a
change in machine load hits every variant alike. Decode time per output token = (whole call - prefill) /
(new tokens - 1), where prefill is the time to the first stopping-criteria stamp (both loops call the stopping
criteria once per step); OPERA's rollbacks (re-decided steps and the re-run prefill each one costs) are inside that
time, so it is per token of the answer, not per step. Rollbacks per call are counted from the search's log. Peak
memory: torch.cuda.max_memory_allocated growth on CUDA; on CPU the growth of peak RSS during the timed calls.
`--batch N` runs every variant on N copies of the prompt in one generate call (OPERA: one search, each copy its own
beams and rollbacks). Usage:

    python scripts/bench_opera.py [--device cuda] [--dtype bfloat16] [--repeats 3] [--new-tokens 24] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

import torch
from transformers import StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import _peak_rss, _rss_now, build_model, make_inputs  # noqa: E402
from bench_timing import StepClock, cuda_sync  # noqa: E402

VARIANTS = ("greedy", "beam5", "opera5", "opera5_n1", "opera5_rb")
ROLLBACK_EVERY, ROLLBACK_BACK = 8, 4
SEARCH_LOGGER = "vlm_attn.passes.opera_search"


def generate_kwargs(variant: str) -> dict:
    from vlm_attn import OPERAConfig
    from vlm_attn.passes.opera_search import opera_decoding

    if variant == "greedy":
        return {"num_beams": 1}
    if variant == "beam5":
        return {"num_beams": 5}
    config = OPERAConfig(num_attn_candidates=1) if variant == "opera5_n1" else OPERAConfig()
    return {"num_beams": config.num_beams, "custom_generate": opera_decoding, "opera": config}


class RollbackCounter(logging.Handler):
    """Counts the search's "rollback" debug records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += record.getMessage().startswith("OPERA: rollback")


def inject_rollbacks() -> None:
    """In this process only: the search's rollback rule returns a target every ROLLBACK_EVERY response tokens
    (each position once), so the re-run prefill a rollback costs is inside the timing."""
    from vlm_attn.passes import opera_search

    def target(history: torch.Tensor, counts: dict, config) -> int | None:
        steps = history.shape[1]
        back = steps - ROLLBACK_BACK
        return back if steps % ROLLBACK_EVERY == 0 and back >= 0 and back not in counts else None

    opera_search.rollback_target = target


class Variant:
    """One variant's model, inputs and generate settings; `call(n)` times one generate of n tokens."""

    def __init__(self, variant: str, device: str, dtype: str, batch: int) -> None:
        self.device = device
        self.model = build_model().to(device=device, dtype=getattr(torch, dtype))
        self.inputs = {k: v.repeat(batch, *([1] * (v.dim() - 1))) for k, v in make_inputs(device).items()}
        self.inputs["pixel_values"] = self.inputs["pixel_values"].to(getattr(torch, dtype))
        self.extra = generate_kwargs(variant)
        if variant == "opera5_rb":
            inject_rollbacks()
        self.rollbacks = RollbackCounter()
        log = logging.getLogger(SEARCH_LOGGER)
        log.setLevel(logging.DEBUG)
        log.addHandler(self.rollbacks)

    def call(self, n: int) -> tuple[float, int]:
        """(decode seconds per output token, rollbacks) of one generate call of exactly n new tokens."""
        clock = StepClock(sync=cuda_sync(self.device))
        before = self.rollbacks.count
        clock.start()
        with torch.no_grad():
            self.model.generate(**self.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                stopping_criteria=StoppingCriteriaList([clock]), **self.extra)
        return (clock.total_s - clock.prefill_s) / (n - 1), self.rollbacks.count - before


def _worker(settings: tuple, threads: int, new_tokens: int, pipe) -> None:
    """A variant's process: warm up, then one timed call per "call" message; "done" answers the peak memory."""
    if threads:
        torch.set_num_threads(threads)
    v = Variant(*settings)
    v.call(2)  # warm-up
    device = settings[1]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _rss_now()
    pipe.send("ready")
    while (msg := pipe.recv()) == "call":
        pipe.send(v.call(new_tokens))
    peak = torch.cuda.max_memory_allocated() - base if device.startswith("cuda") else max(0, _peak_rss() - rss_before)
    pipe.send(peak)


def run_interleaved(variants: list[str], device: str, dtype: str, repeats: int, new_tokens: int, batch: int,
                    threads: int) -> dict[str, dict]:
    """Start every variant's process, then time `repeats` rounds of one call per variant, in turn."""
    ctx = mp.get_context("spawn")
    pipes, procs = {}, []
    for variant in variants:  # built one after the other: the processes do not compete while loading
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=((variant, device, dtype, batch), threads, new_tokens, theirs))
        proc.start()
        procs.append(proc)
        if ours.recv() != "ready":
            raise RuntimeError(f"variant {variant} failed to start")
        pipes[variant] = ours
    results = {v: {"variant": v, "decode_s_per_token": [], "rollbacks": []} for v in variants}
    for _ in range(repeats):
        for variant in variants:
            pipes[variant].send("call")
            seconds, rollbacks = pipes[variant].recv()
            results[variant]["decode_s_per_token"].append(seconds)
            results[variant]["rollbacks"].append(rollbacks)
    for variant in variants:
        pipes[variant].send("done")
        results[variant]["peak_bytes"] = pipes[variant].recv()
    for proc in procs:
        proc.join()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of timed calls (one per variant a round)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=1, help="prompts per generate call (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's own)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "beam5" not in variants or "greedy" not in variants:
        raise SystemExit(f"--variants must name greedy and beam5 (the references) among {','.join(VARIANTS)}")
    if args.batch < 1 or args.repeats < 1:
        raise SystemExit("--batch and --repeats must be 1 or more")
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be 2 or more (one prefill and at least one decode step)")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    results = run_interleaved(variants, args.device, dtype, args.repeats, args.new_tokens, args.batch, args.threads)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    threads = args.threads or torch.get_num_threads()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {threads} threads"
    sys.stdout.write(f"device: {device}; dtype {dtype}; prompt 601 tokens, batch {args.batch}; {args.new_tokens} new "
                     f"tokens a call; {args.repeats} interleaved rounds (+1 warm-up each), a process per variant; "
                     "median (min-max) of the calls\n")
    sys.stdout.write("| variant | decode ms/token | x beam5 | x greedy | rollbacks/call | peak MiB | mem x beam5 "
                     "| mem x greedy |\n|---|---|---|---|---|---|---|---|\n")
    med = {v: statistics.median(r["decode_s_per_token"]) for v, r in results.items()}
    for v, r in results.items():
        mem, times = r["peak_bytes"], r["decode_s_per_token"]
        ratio = lambda ref: mem / results[ref]["peak_bytes"] if results[ref]["peak_bytes"] else float("nan")  # noqa
        sys.stdout.write(f"| {v} | {med[v] * 1e3:.1f} ({min(times) * 1e3:.0f}-{max(times) * 1e3:.0f}) "
                         f"| {med[v] / med['beam5']:.2f} | {med[v] / med['greedy']:.2f} "
                         f"| {statistics.median(r['rollbacks']):g} | {mem / 2**20:.0f} | {ratio('beam5'):.2f} "
                         f"| {ratio('greedy'):.2f} |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
