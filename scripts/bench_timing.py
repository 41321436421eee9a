"""Per-step timing inside one `generate` call, and the summary statistics the benchmarks report.

Timing a generate of n tokens and subtracting a separate generate of 1 token leaves two noisy prefills in every
decode figure; here one call gives both: `StepClock` is a `StoppingCriteria`, which `generate` calls once per new
token after the forward, the logits processors (PAI/PAINT's guidance pass included) and token selection, so the gap
between two consecutive stamps is one whole decode step, and the first stamp less the start is the prefill (vision
tower, prompt forward and the first token). It never asks generation to stop.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria


def cuda_sync(device: str) -> Callable[[], None]:
    """What to call before each timestamp on `device`: `torch.cuda.synchronize` on CUDA, nothing elsewhere."""
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


class StepClock(StoppingCriteria):
    """Records a timestamp at every generation step; pass it in `stopping_criteria` and call `start()` first."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] = lambda: None):
        self.clock, self.sync = clock, sync
        self.t0: float | None = None
        self.stamps: list[float] = []

    def start(self) -> None:
        """Mark the start of a generate call (after a device sync) and forget earlier stamps."""
        self.sync()
        self.t0 = self.clock()
        self.stamps = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.sync()
        self.stamps.append(self.clock())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    @property
    def prefill_s(self) -> float:
        """Seconds from `start()` to the first token's step (prefill plus the first token)."""
        if self.t0 is None or not self.stamps:
            raise RuntimeError("StepClock has no stamps: call start() and pass it to generate(stopping_criteria=...)")
        return self.stamps[0] - self.t0

    @property
    def step_s(self) -> list[float]:
        """Seconds of each decode step after the first token (n new tokens give n - 1 steps)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    @property
    def total_s(self) -> float:
        """Seconds from `start()` to the last step's stamp."""
        return self.stamps[-1] - self.t0 if self.stamps and self.t0 is not None else float("nan")


@dataclass(frozen=True)
class Summary:
    """Median, quartiles and range of a sample of timings, and its size."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    n: int

    def ratio(self, ref: "Summary") -> float:
        """This median over the reference's median: the one statistic every ratio in the benchmarks uses."""
        return self.median / ref.median


def summarize(values: Sequence[float]) -> Summary:
    """Summary of `values` (quartiles by linear interpolation between order statistics, as numpy's default)."""
    if not values:
        raise ValueError("no timings to summarize: the variant produced no steps (new tokens must be >= 2)")
    xs = sorted(values)
    if len(xs) == 1:
        return Summary(xs[0], xs[0], xs[0], xs[0], xs[0], 1)
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return Summary(statistics.median(xs), q1, q3, xs[0], xs[-1], len(xs))
