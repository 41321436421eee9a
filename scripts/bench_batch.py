"""Throughput of each method against vanilla SDPA at several batch sizes, in one run (issue 6's benchmark).

Uses the LLaVA-shaped random model of `bench_overhead.py` (576 image tokens, ~600-token prompts) and prints, for
batch sizes 1, 4 and 8, for vanilla SDPA and each method: decode tokens/s (batch / median decode step), its slowdown
(method's median step / vanilla's median step; target <= 1.10x for VAR at every batch size), the end-to-end tokens/s
of the whole generate call (prefill included; median over rounds) and its slowdown.

Per-step times come from a `bench_timing.StepClock` in `stopping_criteria`, which generate calls once per new token
after the forward, the logits processors and token selection (a whole step; CUDA: synchronized before each stamp).
At each batch size every round makes one generate call per variant, variants alternating (the order rotating by one
each round), the first round dropped as warm-up. On CPU, run with the `MALLOC_*` variables of
`bench_overhead.MALLOC_ENV` set in the environment (the script says whether they are); generation goes through
`vlm_attn.steered_generate`.

    python scripts/bench_batch.py [--device cuda] [--batch-sizes 1,4,8] [--new-tokens 32] [--repeats 3] \
        [--methods var,pai,paint]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import MALLOC_NOTE, _malloc_tuned, build_model, make_inputs, timed_generate  # noqa: E402
from bench_timing import summarize  # noqa: E402

import vlm_attn  # noqa: E402


def method_configs(name: str):
    """Benchmark settings: random weights have no massive activations, so VAR gets explicit dims and a low tau."""
    from vlm_attn.methods.registry import config_classes

    if name == "var":
        return vlm_attn.VARConfig(sink_dims=(1, 2, 3), tau=3.0, rho=0.3)
    classes = config_classes("attention")
    if name not in classes:
        raise SystemExit(f"unknown method {name!r}; available: {', '.join(sorted(classes))}")
    cls = classes[name]
    kwargs = {"guidance": False} if "guidance" in cls.settings() else {}
    return cls(**kwargs)


def batched(inputs: dict, batch: int) -> dict:
    return {k: v.repeat(batch, *([1] * (v.ndim - 1))) for k, v in inputs.items()}


def interleaved_rounds(model, inputs: dict, configs: dict, new_tokens: int, repeats: int, device: str) -> dict:
    """Per variant ("vanilla" first, then `configs`' methods): all decode step seconds and per-call total seconds
    of `repeats` rounds, each round one generate call per variant in turn (plus a dropped warm-up round)."""
    out = {name: {"steps": [], "totals": []} for name in ["vanilla", *configs]}
    names = list(out)
    for round_ in range(repeats + 1):
        shift = round_ % len(names)  # the order rotates each round: no variant always runs first
        for name in names[shift:] + names[:shift]:
            handle = vlm_attn.apply(model, configs[name]) if name in configs else None
            clock = timed_generate(model, inputs, new_tokens, device)
            if handle is not None:
                handle.remove()
            if round_ > 0:
                out[name]["steps"] += clock.step_s
                out[name]["totals"].append(clock.total_s)
                sys.stderr.write(f"batch {inputs['input_ids'].shape[0]} round {round_} {name}: median step "
                                 f"{1000 * summarize(clock.step_s).median:.1f} ms, call {clock.total_s:.2f} s\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per batch size (after one warm-up)")
    ap.add_argument("--methods", default="var")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.new_tokens < 2:
        raise SystemExit(f"--new-tokens {args.new_tokens} gives no decode step: use --new-tokens 2 or more")
    methods = [m for m in args.methods.split(",") if m]
    configs = {m: method_configs(m) for m in methods}  # unknown names fail here, before the model is built
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model().to(device=args.device, dtype=dtype)
    base = make_inputs(args.device)
    base["pixel_values"] = base["pixel_values"].to(dtype)
    if args.device == "cpu":
        sys.stdout.write(f"CPU allocator: {MALLOC_NOTE if _malloc_tuned() else 'glibc defaults'}\n")
    sys.stdout.write(f"device {args.device}; dtype {dtype}; {args.new_tokens} new tokens a call "
                     f"({args.new_tokens - 1} decode steps); {args.repeats} interleaved rounds (+1 warm-up) per batch "
                     "size; decode tok/s = batch / median step, e2e tok/s = batch x new tokens / median call\n")
    names = ["vanilla", *methods]
    decode_rows, e2e_rows = [], []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        inputs = batched(base, batch)
        times = interleaved_rounds(model, inputs, configs, args.new_tokens, args.repeats, args.device)
        steps = {n: summarize(t["steps"]) for n, t in times.items()}
        totals = {n: summarize(t["totals"]) for n, t in times.items()}
        decode_rows.append(f"| {batch} | {steps['vanilla'].n} | " + " | ".join(
            f"{batch / steps[n].median:.1f} ({batch / steps[n].q3:.1f}-{batch / steps[n].q1:.1f}) | "
            f"{steps[n].ratio(steps['vanilla']):.2f}x" for n in names) + " |")
        e2e_rows.append(f"| {batch} | {totals['vanilla'].n} | " + " | ".join(
            f"{batch * args.new_tokens / totals[n].median:.1f} | {totals[n].ratio(totals['vanilla']):.2f}x"
            for n in names) + " |")
    rule = "|" + "---|" * (2 + 2 * len(names))
    sys.stdout.write("decode (per-step times; tok/s median, in brackets from the steps' IQR; x = median step / "
                     "vanilla's)\n| batch | steps | " + " | ".join(f"{n} tok/s | x" for n in names) + " |\n"
                     + rule + "\n" + "\n".join(decode_rows) + "\n")
    sys.stdout.write("end to end (whole generate call, prefill included; x = median call / vanilla's)\n"
                     "| batch | calls | " + " | ".join(f"{n} tok/s | x" for n in names) + " |\n"
                     + rule + "\n" + "\n".join(e2e_rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
