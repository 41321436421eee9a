"""The benchmarks' per-step recorder (scripts/bench_timing.py): stamps on a fake clock, summaries, placement in generate."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

import vlm_attn
from vlm_attn.prompting import build_inputs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_timing.py"
spec = importlib.util.spec_from_file_location("bench_timing", SCRIPT)
bench_timing = importlib.util.module_from_spec(spec)
sys.modules.setdefault("bench_timing", bench_timing)  # dataclasses look their module up there
spec.loader.exec_module(bench_timing)


def test_step_clock_on_a_fake_clock():
    ticks = iter([10.0, 11.5, 11.7, 12.0, 12.4])
    synced = []
    clock = bench_timing.StepClock(clock=lambda: next(ticks), sync=lambda: synced.append(1))
    clock.start()
    ids = torch.zeros(3, 5, dtype=torch.long)
    for _ in range(4):
        stop = clock(ids, torch.zeros(3, 7))
        assert stop.dtype == torch.bool and stop.shape == (3,) and not stop.any()
    assert clock.prefill_s == pytest.approx(1.5)
    assert clock.step_s == pytest.approx([0.2, 0.3, 0.4])
    assert clock.total_s == pytest.approx(2.4)
    assert len(synced) == 5  # before the start and before every stamp


def test_step_clock_without_stamps_says_how_to_use_it():
    with pytest.raises(RuntimeError, match="stopping_criteria"):
        bench_timing.StepClock().prefill_s


def test_summarize_hand_computed():
    s = bench_timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.q1, s.q3, s.low, s.high, s.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    even = bench_timing.summarize([1.0, 2.0, 3.0, 10.0])  # quartiles interpolate: 1.75 and 4.75
    assert (even.median, even.q1, even.q3) == (2.5, 1.75, 4.75)
    assert even.ratio(s) == pytest.approx(2.5 / 3.0)
    assert bench_timing.summarize([7.0]).median == 7.0
    with pytest.raises(ValueError, match="no timings"):
        bench_timing.summarize([])


class Stamp(LogitsProcessor):
    """A logits processor that records the shared counter when it runs."""

    def __init__(self, counter, seen):
        self.counter, self.seen = counter, seen

    def __call__(self, input_ids, scores):
        self.seen.append(next(self.counter))
        return scores


def test_one_stamp_per_token_after_every_logits_processor(load, image):
    """In a real generate (with PAI's guidance processor appended), the clock stamps once per new token and each
    stamp comes after the step's logits processors: steps measure the whole step, guidance included."""
    model, processor = load("llava")
    inputs = dict(build_inputs(processor, [image], ["Describe the image."]))
    counter, seen = itertools.count(), []
    clock = bench_timing.StepClock(clock=lambda: float(next(counter)))
    handle = vlm_attn.apply(model, vlm_attn.PAIConfig(alpha=0.2, guidance=True))
    try:
        assert len(handle.logits_processor(inputs)) == 1  # guidance adds its own processor, after ours
        clock.start()
        vlm_attn.steered_generate(model, **inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                  logits_processor=LogitsProcessorList([Stamp(counter, seen)]),
                                  stopping_criteria=StoppingCriteriaList([clock]))
    finally:
        handle.remove()
    assert len(clock.stamps) == 5 and len(clock.step_s) == 4
    assert len(seen) == 5
    for before, stamp in zip(seen, clock.stamps):
        assert before < stamp
    for stamp, after in zip(clock.stamps, seen[1:]):
        assert stamp < after
