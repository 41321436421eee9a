"""OPERA's cost against vanilla beam search and greedy decoding, in one run (issue 15's benchmark).

Same benchmark model and prompt as scripts/bench_overhead.py (LLaVA-shaped random model: language model hidden 1024,
8 layers, 16 heads; 576 image tokens, a ~600-token prompt). Variants, each in a fresh process (so that its peak
memory is its own), each generating exactly --new-tokens tokens (min_new_tokens) --repeats times after a warm-up:

- greedy        num_beams=1 (reference of the second ratio column)
- beam5         transformers' beam search, 5 beams (reference of the first ratio column; goal: OPERA <= 2.0x)
- opera5        OPERA, official defaults (5 beams, 5 candidates, rollback on)
- opera5_n1     OPERA's "efficient" setting in its README: 1 attention candidate

Decode time per output token = (whole call - prefill) / (new tokens - 1), where prefill is the time to the first
stopping-criteria stamp (both loops call the stopping criteria once per step). OPERA's rollbacks (re-decided steps)
are inside that time, so it is per token of the answer, not per step. Peak memory: torch.cuda.max_memory_allocated
growth on CUDA; on CPU the growth of peak RSS during the calls. `--batch N` runs every variant on N copies of the
prompt in one generate call (OPERA: one search, each copy its own beams and rollbacks). Usage:

    python scripts/bench_opera.py [--device cuda] [--dtype bfloat16] [--repeats 2] [--new-tokens 24] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

import torch
from transformers import StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import _peak_rss, _rss_now, build_model, make_inputs  # noqa: E402
from bench_timing import StepClock, cuda_sync  # noqa: E402

VARIANTS = ("greedy", "beam5", "opera5", "opera5_n1")


def generate_kwargs(variant: str) -> dict:
    from vlm_attn import OPERAConfig
    from vlm_attn.passes.opera_search import opera_decoding

    if variant == "greedy":
        return {"num_beams": 1}
    if variant == "beam5":
        return {"num_beams": 5}
    config = OPERAConfig() if variant == "opera5" else OPERAConfig(num_attn_candidates=1)
    return {"num_beams": config.num_beams, "custom_generate": opera_decoding, "opera": config}


def run_variant(variant: str, device: str, dtype: str, repeats: int, new_tokens: int, batch: int = 1) -> dict:
    model = build_model().to(device=device, dtype=getattr(torch, dtype))
    inputs = {k: v.repeat(batch, *([1] * (v.dim() - 1))) for k, v in make_inputs(device).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
    extra = generate_kwargs(variant)

    def call(n: int) -> StepClock:
        clock = StepClock(sync=cuda_sync(device))
        clock.start()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           stopping_criteria=StoppingCriteriaList([clock]), **extra)
        return clock

    call(2)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _rss_now()
    per_token = []
    for _ in range(repeats):
        clock = call(new_tokens)
        per_token.append((clock.total_s - clock.prefill_s) / (new_tokens - 1))
    peak = torch.cuda.max_memory_allocated() - base if device.startswith("cuda") else max(0, _peak_rss() - rss_before)
    return {"variant": variant, "decode_s_per_token": per_token, "peak_bytes": peak}


def _child(args: tuple, queue: "mp.Queue") -> None:
    queue.put(run_variant(*args))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=1, help="prompts per generate call (default 1)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "beam5" not in variants or "greedy" not in variants:
        raise SystemExit(f"--variants must name greedy and beam5 (the references) among {','.join(VARIANTS)}")
    if args.batch < 1:
        raise SystemExit("--batch must be 1 or more")
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be 2 or more (one prefill and at least one decode step)")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    ctx = mp.get_context("spawn")
    results = {}
    for variant in variants:
        queue = ctx.Queue()
        settings = (variant, args.device, dtype, args.repeats, args.new_tokens, args.batch)
        proc = ctx.Process(target=_child, args=(settings, queue))
        proc.start()
        results[variant] = queue.get()
        proc.join()
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    sys.stdout.write(f"device: {device}; dtype {dtype}; prompt 601 tokens, batch {args.batch}; "
                     f"{args.new_tokens} new tokens a call; {args.repeats} calls per variant (+1 warm-up), each variant in its own process; medians\n")
    sys.stdout.write("| variant | decode ms/token | x beam5 | x greedy | peak MiB | mem x beam5 | mem x greedy |\n"
                     "|---|---|---|---|---|---|---|\n")
    med = {v: statistics.median(r["decode_s_per_token"]) for v, r in results.items()}
    for v, r in results.items():
        mem = r["peak_bytes"]
        ratio = lambda ref: mem / results[ref]["peak_bytes"] if results[ref]["peak_bytes"] else float("nan")  # noqa
        sys.stdout.write(f"| {v} | {med[v] * 1e3:.1f} | {med[v] / med['beam5']:.2f} | {med[v] / med['greedy']:.2f} "
                         f"| {mem / 2**20:.0f} | {ratio('beam5'):.2f} | {ratio('greedy'):.2f} |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
