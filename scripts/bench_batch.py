"""Throughput of each method against vanilla SDPA at several batch sizes, in one run (issue 6's benchmark).

Uses the LLaVA-shaped random model of `bench_overhead.py` (576 image tokens, ~600-token prompts) and prints, for
batch sizes 1, 4 and 8, generated tokens per second for vanilla SDPA and each method, and the ratio
vanilla time / method time-per-token (the slowdown; target <= 1.10x for VAR at every batch size).

    python scripts/bench_batch.py [--device cuda] [--batch-sizes 1,4,8] [--new-tokens 32] [--methods var,pai,paint]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import build_model, make_inputs  # noqa: E402

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


def tokens_per_second(model, inputs: dict, new_tokens: int, repeats: int, device: str) -> float:
    def run(n):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(2)
    best = min(run(new_tokens) for _ in range(repeats))
    return inputs["input_ids"].shape[0] * new_tokens / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="var")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model = build_model().to(device=args.device, dtype=dtype)
    base = make_inputs(args.device)
    base["pixel_values"] = base["pixel_values"].to(dtype)
    methods = [m for m in args.methods.split(",") if m]
    sys.stdout.write(f"device {args.device}; dtype {dtype}; {args.new_tokens} new tokens; best of {args.repeats}\n")
    header = "| batch | vanilla tok/s | " + " | ".join(f"{m} tok/s | {m} slowdown" for m in methods) + " |\n"
    sys.stdout.write(header + "|" + "---|" * (2 + 2 * len(methods)) + "\n")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        inputs = batched(base, batch)
        vanilla = tokens_per_second(model, inputs, args.new_tokens, args.repeats, args.device)
        cells = [f"{vanilla:.1f}"]
        for name in methods:
            with vlm_attn.apply(model, method_configs(name)):
                tps = tokens_per_second(model, inputs, args.new_tokens, args.repeats, args.device)
            cells += [f"{tps:.1f}", f"{vanilla / tps:.2f}x"]
        sys.stdout.write(f"| {batch} | " + " | ".join(cells) + " |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
