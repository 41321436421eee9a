"""Dispatcher ops per decode token, vanilla SDPA against each method (the hot-path measure of the README).

Builds `bench_overhead.py`'s LLaVA-shaped random model (8 language layers, so VAR steers 6) and generates 4 tokens
under a `TorchDispatchMode` that counts every aten op reaching the dispatcher. A forward pre-hook on the model marks
where each generate step starts; the ops of one decode step are those between the starts of the 3rd and 4th forward
(the steady state: caches built, first-decode work done). Op counts do not depend on tensor sizes, only on the code
path, so the figure is exact and repeatable (no timing noise). Usage:

    python scripts/count_decode_ops.py [--variants sdpa,var,pai,paint,dola,vista,only]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import build_model, make_inputs  # noqa: E402


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def decode_step_ops(model: torch.nn.Module, inputs: dict) -> int:
    """Aten ops of one steady decode step of `model.generate` (between the 3rd and the 4th forward)."""
    counter = _Count()
    starts: list[int] = []
    hook = model.register_forward_pre_hook(lambda *_: starts.append(counter.n))
    try:
        with torch.no_grad(), counter:
            model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    return starts[-1] - starts[-2]  # the last two forwards: VISTA's steering passes add forwards to the prefill only


def main(argv: list[str] | None = None) -> int:
    import vlm_attn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="sdpa,var,pai,paint")
    args = parser.parse_args(argv)
    configs = {"sdpa": None, "var": vlm_attn.VARConfig(sink_dims=(1, 2, 3), tau=3.0, rho=0.3),
               "pai": vlm_attn.PAIConfig(alpha=0.2, guidance=False),
               "paint": vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=False),
               "dola": vlm_attn.DoLaConfig(), "vista": vlm_attn.VISTAConfig(), "only": vlm_attn.ONLYConfig()}
    model = build_model()
    inputs = make_inputs("cpu")
    counts = {}
    for variant in args.variants.split(","):
        handle = vlm_attn.apply(model, configs[variant]) if configs[variant] is not None else None
        counts[variant] = decode_step_ops(model, inputs)
        if handle is not None:
            handle.remove()
    base = counts.get("sdpa")
    for variant, n in counts.items():
        extra = "" if base is None or variant == "sdpa" else f"  (+{n - base} over vanilla)"
        print(f"{variant:6s} {n} ops per decode token{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
