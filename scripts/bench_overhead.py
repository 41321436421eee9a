"""Speed and memory of vlm-attn against the unpatched model, in one run (issue 2's benchmark).

Builds a LLaVA-shaped random model (language model: hidden 1024, 8 layers, 16 heads; 576 image tokens from a
336px CLIP-shaped tower; a ~600-token prompt) and measures, for each variant, prefill time, decode time per step
over 32 new tokens and peak memory, each as a ratio to vanilla SDPA:

- vanilla SDPA              the unpatched model (reference)
- vanilla eager             attn_implementation="eager"
- peer style                eager with output_attentions and output_hidden_states (how the official VAR code runs)
- VAR (vlm-attn)            SDPA with VAR applied through vlm_attn.apply
- pai, paint                PAI / PAINT amplification without guidance (target: decode <= 1.05x; PAINT's vision
                            capture shows in its prefill ratio, target <= 1.05x)
- pai+guidance, ...         with the image-free guidance pass (a second forward per step: compare with 2x)
  (select with --variants sdpa,pai,paint,pai+guidance,paint+guidance)
- vcd, icd, m3id, var+vcd   the contrastive decoders: a second branch (noised image / disturbed instruction / no
                            image) with its own KV cache, one extra forward per step (target: decode <= 2.05x;
                            peak memory <= 1.10x plus the second cache)
- dola, vista, only         the same-forward baselines with their defaults (target: decode <= 1.15x, peak memory
                            <= 1.05x; VISTA's prefill carries its two steering-vector prefills)

How time is measured: every generate call carries a `bench_timing.StepClock` in `stopping_criteria`. generate
calls stopping criteria once per new token AFTER the forward, all logits processors (the guidance variants' own
processor included, which `vlm_attn.steered_generate` appends) and token selection, so consecutive stamps bracket
one whole decode step; prefill = start of the call to the first stamp (vision tower, prompt forward, first token).
On CUDA each stamp follows a torch.cuda.synchronize(). n new tokens give one prefill and n - 1 decode steps per
call; a variant's decode figure is the median over all its steps (with IQR, range and step count), its prefill the
median over its calls, and every ratio is a median over vanilla SDPA's median.

Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU each variant runs in a fresh subprocess and the
figure is the growth of peak RSS during generation. On CPU the script restarts itself with glibc malloc told to keep
freed blocks (see MALLOC_ENV; --no-malloc-tuning to skip), so that the KV cache's per-step torch.cat does not
page-fault fresh memory, a multi-ms, state-dependent cost that a GPU's caching allocator does not have. Usage:

    python scripts/bench_overhead.py [--device cuda] [--dtype bfloat16] [--repeats 3] [--new-tokens 32]
    python scripts/bench_overhead.py --interleave [--repeats 5] [--variants sdpa,var,pai,paint,pai+guidance]
    python scripts/bench_overhead.py --anchor    # Visual Funnel anchoring pass vs vanilla prefill vs peer style
    python scripts/bench_overhead.py --family smolvlm [--views 3] [--interleave]   # PAINT on a tiled family

--interleave runs every variant in one process on one model, one generate call per variant per round, variants
alternating within each round and the order rotating by one each round (the first round warms up and is dropped),
so that drift of a shared machine, and any cost of running first in a round, fall on all variants alike; no memory
figures. It also prints, per variant, the range over rounds of (its median step in that round / vanilla's median
step in the same round).

`--family smolvlm` builds a random model of SmolVLM-256M's real shape (Idefics3: SigLIP 768 wide, 12 layers, 12 heads,
512px views of 1024 patches, pixel shuffle 4 -> 64 tokens a view; Llama text 576 wide, 30 layers) and a prompt with
`--views` views (tiles + the global view, each its own run of image tokens), and measures PAINT's prefill (a one-token
`generate`, timed to its step stamp; CPU seconds over the whole call) and peak memory against vanilla SDPA: each
variant in a fresh process, peak = growth of peak RSS over its first call (CUDA: max_memory_allocated), time = median
of --repeats warm calls. With --interleave the prefill times come from one process, variants alternating in each
round (median and range reported).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_timing import StepClock, Summary, cuda_sync, summarize  # noqa: E402

IMAGE_TOKENS = 576
TEXT_BEFORE, TEXT_AFTER = 5, 19  # ~600-token prompt in all


def redrawn(model_class: type, config: Any, seed: int) -> torch.nn.Module:
    """A random model of `config` with weights redrawn at std 0.05 (the 0.02 default keeps attention uniform)."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model

def build_model(seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vision = dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                  num_attention_heads=4, image_size=336, patch_size=14)
    text = dict(model_type="llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                num_attention_heads=16, num_key_value_heads=16, vocab_size=32064, max_position_embeddings=2048)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return redrawn(LlavaForConditionalGeneration, config, seed)


def make_inputs(device: str):
    gen = torch.Generator().manual_seed(1)
    before = torch.randint(3, 32000, (TEXT_BEFORE,), generator=gen)
    after = torch.randint(3, 32000, (TEXT_AFTER,), generator=gen)
    ids = torch.cat([torch.tensor([1]), before, torch.full((IMAGE_TOKENS,), 32000), after])[None]
    pixels = torch.randn(1, 3, 336, 336, generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": pixels.to(device)}


VARIANTS = ("sdpa", "eager", "peer", "var", "pai", "paint", "pai+guidance", "paint+guidance", "vcd", "icd", "m3id",
            "var+vcd", "dola", "vista", "only")
NAMES = {"sdpa": "vanilla SDPA", "eager": "vanilla eager", "peer": "peer style (eager + outputs)",
         "var": "VAR (vlm-attn)", "pai": "PAI, no guidance", "paint": "PAINT, no guidance",
         "pai+guidance": "PAI + guidance (vs 2x)", "paint+guidance": "PAINT + guidance (vs 2x)",
         "vcd": "VCD (vs 2x)", "icd": "ICD (vs 2x)", "m3id": "M3ID (vs 2x)", "var+vcd": "VAR + VCD (vs 2x)",
         "dola": "DoLa (low layers)", "vista": "VISTA (VSV + SLA)", "only": "ONLY"}
CONTRASTIVE = {"vcd", "icd", "m3id", "var+vcd"}  # second-branch decoders: +1 forward per step (own KV cache)


def bench_tokenizer():
    """A real tokenizer for ICD's disturbance (the shipped toy model's; the random model has none)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "vlm_attn" / "assets" / "toy_vlm")


def attach(model, variant: str):
    """Put `model` in `variant`'s state; returns (handle or None, extra generate kwargs). Undo with `detach`."""
    import vlm_attn

    if variant in ("eager", "peer"):
        model.set_attn_implementation("eager")
    extra = dict(output_attentions=True, output_hidden_states=True, return_dict_in_generate=True) if variant == "peer" else {}
    guided = variant.endswith("+guidance")
    method = variant.split("+")[0]
    config = {"var": lambda: vlm_attn.VARConfig(sink_dims=(1, 2, 3), tau=3.0, rho=0.3),
              "pai": lambda: vlm_attn.PAIConfig(alpha=0.2, guidance=guided),
              "paint": lambda: vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=guided),
              "dola": lambda: vlm_attn.DoLaConfig(), "vista": lambda: vlm_attn.VISTAConfig(),
              "only": lambda: vlm_attn.ONLYConfig()}.get(method)
    if variant in CONTRASTIVE:
        var = vlm_attn.VARConfig(sink_dims=(1, 2, 3), tau=3.0, rho=0.3)
        decoder = {"icd": vlm_attn.ICDConfig, "m3id": vlm_attn.M3IDConfig}.get(method, vlm_attn.VCDConfig)()
        configs = [var, decoder] if variant == "var+vcd" else [decoder]
        return vlm_attn.apply(model, configs, processor=bench_tokenizer() if method == "icd" else None), extra
    handle = vlm_attn.apply(model, config()) if config is not None else None
    return handle, extra


def detach(model, variant: str, handle) -> None:
    """Undo `attach`: remove the methods and go back to SDPA."""
    if handle is not None:
        handle.remove()
    if variant in ("eager", "peer"):
        model.set_attn_implementation("sdpa")


def timed_generate(model, inputs: dict, new_tokens: int, device: str, extra: dict | None = None) -> StepClock:
    """One greedy generate of exactly `new_tokens` tokens through `vlm_attn.steered_generate` (so that guidance,
    when applied, runs as in every entry point), with a `StepClock` stamping each step; returns the clock."""
    import vlm_attn

    clock = StepClock(sync=cuda_sync(device))
    clock.start()
    with torch.no_grad():
        vlm_attn.steered_generate(model, **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, stopping_criteria=StoppingCriteriaList([clock]), **(extra or {}))
    return clock


def run_variant(variant: str, device: str, dtype: str, repeats: int, new_tokens: int) -> dict:
    """Prefill, per-step decode times and peak memory of `repeats` generate calls of one variant (after a warm-up)."""
    model = build_model().to(device=device, dtype=getattr(torch, dtype))
    inputs = make_inputs(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
    handle, extra = attach(model, variant)
    timed_generate(model, inputs, 2, device, extra)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    rss_before = _rss_now()
    prefill, steps = [], []
    for _ in range(repeats):
        clock = timed_generate(model, inputs, new_tokens, device, extra)
        prefill.append(clock.prefill_s)
        steps += clock.step_s
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = max(0, _peak_rss() - rss_before)
    out = {"variant": variant, "prefill_s": prefill, "decode_step_s": steps, "peak_bytes": peak}
    if handle is not None and variant in CONTRASTIVE:
        out["method_report"] = {"guidance": handle.report().get("guidance")}  # "applied": the branch ran
    elif handle is not None and variant != "var":
        out["method_report"] = {k: v for k, v in handle.report().get(variant.split("+")[0], {}).items()
                                if k in ("active", "images", "local_tokens", "summary_tokens")}
    elif handle is not None:
        report = handle.report()["var"]
        out["var_heads_redistributed"] = report["total_heads_redistributed"]
        out["var_visual_sinks"] = sum(report["visual_sinks"].values())
    detach(model, variant, handle)
    return out


# ---------------------------------------------------------------- a tiled family: SmolVLM-256M's real shape
SMOL_IMAGE_TOKEN, SMOL_TOKENS_PER_VIEW = 49190, 64


def build_tiled_model(seed: int = 0):
    """A random Idefics3 model with SmolVLM-256M-Instruct's architecture (its config.json's shapes)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    vision = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  image_size=512, patch_size=16)
    text = dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, intermediate_size=1536, vocab_size=49280, max_position_embeddings=8192)
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=4, image_token_id=SMOL_IMAGE_TOKEN,
                            pad_token_id=2, bos_token_id=1, eos_token_id=2)
    return redrawn(Idefics3ForConditionalGeneration, config, seed)


def make_tiled_inputs(device: str, views: int):
    """`views` 512px views, each a run of 64 image tokens between two wrapper tokens (as the processor writes)."""
    gen = torch.Generator().manual_seed(1)
    parts = [torch.tensor([1]), torch.randint(3, 49000, (5,), generator=gen)]
    for _ in range(views):
        parts += [torch.randint(3, 49000, (2,), generator=gen), torch.full((SMOL_TOKENS_PER_VIEW,), SMOL_IMAGE_TOKEN)]
    parts.append(torch.randint(3, 49000, (20,), generator=gen))
    ids = torch.cat(parts)[None]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": torch.randn(1, views, 3, 512, 512, generator=gen).to(device),
            "pixel_attention_mask": torch.ones(1, views, 512, 512, dtype=torch.bool, device=device)}


def _tiled_setup(device: str, dtype: str, views: int):
    model = build_tiled_model().to(device=device, dtype=getattr(torch, dtype))
    inputs = make_tiled_inputs(device, views)
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
    return model, inputs


def _prefill(model, inputs, device: str) -> tuple[float, float]:
    """Wall seconds to the step stamp of a one-token `generate` (prefill, vision encoder included), and the
    process-CPU seconds of the whole call.

    CPU seconds count this process's threads only, so other load on a shared machine moves them far less."""
    c0 = time.process_time()
    clock = timed_generate(model, inputs, 1, device)
    return clock.prefill_s, time.process_time() - c0


def run_tiled_variant(variant: str, device: str, dtype: str, repeats: int, views: int) -> dict:
    """Peak memory of the first prefill and the times of `repeats` warm prefills, for sdpa or paint."""
    model, inputs = _tiled_setup(device, dtype, views)
    handle, _ = attach(model, variant)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # reset the kernel's high-water mark: the model build does not count
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_bytes("VmRSS")
    first = _prefill(model, inputs, device)[0]
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status_bytes("VmHWM")) - base
    runs = [_prefill(model, inputs, device) for _ in range(repeats)]
    out = {"variant": variant, "first_s": first, "times": [w for w, _ in runs], "cpu_times": [c for _, c in runs],
           "peak_bytes": max(0, peak)}
    if handle is not None:
        out["method_report"] = {k: v for k, v in handle.report()["paint"].items()
                                if k in ("active", "images", "local_tokens", "summary_tokens")}
    detach(model, variant, handle)
    return out


def interleaved_tiled(device: str, dtype: str, repeats: int, views: int) -> dict[str, list[tuple[float, float]]]:
    """Prefill (wall, CPU) seconds of sdpa and paint in one process, alternating in every round (first one dropped)."""
    model, inputs = _tiled_setup(device, dtype, views)
    times: dict[str, list[tuple[float, float]]] = {"sdpa": [], "paint": []}
    for round_ in range(repeats + 1):
        for variant in times:
            handle, _ = attach(model, variant)
            t = _prefill(model, inputs, device)
            detach(model, variant, handle)
            if round_ > 0:
                times[variant].append(t)
    return times


def _tiled_main(args, dtype: str) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    tokens = 1 + 5 + args.views * (2 + SMOL_TOKENS_PER_VIEW) + 20
    sys.stdout.write(f"SmolVLM-256M-shaped random model; device: {device_name}; dtype {dtype}; {args.views} views of "
                     f"1024 patches; prompt {tokens} tokens; prefill = one generate step\n")
    if args.interleave:
        times = interleaved_tiled(args.device, dtype, args.repeats, args.views)
        walls = {v: summarize([t[0] for t in ts]) for v, ts in times.items()}
        cpus = {v: summarize([t[1] for t in ts]) for v, ts in times.items()}
        sys.stdout.write(f"interleaved, {args.repeats} rounds; medians, ratios of medians\n| variant | wall s | x | "
                         "CPU s | x | all wall s | all CPU s |\n|---|---|---|---|---|---|---|\n")
        for v, ts in times.items():
            w, c = walls[v], cpus[v]
            sys.stdout.write(f"| {v} | {w.median:.2f} | {w.ratio(walls['sdpa']):.3f} | {c.median:.2f} | "
                             f"{c.ratio(cpus['sdpa']):.3f} | {', '.join(f'{t[0]:.2f}' for t in ts)} | "
                             f"{', '.join(f'{t[1]:.2f}' for t in ts)} |\n")
        return 0
    results = []
    ctx = mp.get_context("spawn")
    for variant in ("sdpa", "paint"):
        if args.device == "cpu":  # a fresh process per variant so that peak RSS is its own
            queue = ctx.Queue()
            proc = ctx.Process(target=_tiled_child, args=(variant, args, dtype, queue))
            proc.start()
            results.append(queue.get())
            proc.join()
        else:
            results.append(run_tiled_variant(variant, args.device, dtype, args.repeats, args.views))
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    wall = {r["variant"]: summarize(r["times"]) for r in results}
    cpu = {r["variant"]: summarize(r["cpu_times"]) for r in results}
    ref = results[0]
    sys.stdout.write(f"median of {args.repeats} warm calls per variant; ratios of medians\n"
                     "| variant | prefill wall s | x | CPU s | x | all wall s | peak MiB | x |\n"
                     "|---|---|---|---|---|---|---|---|\n")
    for r in results:
        w, c = wall[r["variant"]], cpu[r["variant"]]
        sys.stdout.write(f"| {r['variant']} | {w.median:.2f} | {w.ratio(wall['sdpa']):.3f} | "
                         f"{c.median:.2f} | {c.ratio(cpu['sdpa']):.3f} | "
                         f"{', '.join(f'{t:.2f}' for t in r['times'])} | {r['peak_bytes'] / 2**20:.0f} | "
                         f"{r['peak_bytes'] / ref['peak_bytes'] if ref['peak_bytes'] else float('nan'):.3f} |\n")
    for r in results:
        if "method_report" in r:
            sys.stdout.write(f"PAINT report: {r['method_report']}\n")
    return 0


def _tiled_child(variant, args, dtype, queue):
    torch.set_num_threads(args.threads) if args.threads else None
    queue.put(run_tiled_variant(variant, args.device, dtype, args.repeats, args.views))


ANCHOR_NAMES = {"prefill": "vanilla prefill (SDPA forward)", "anchor": "anchoring pass (vlm-attn, stops at layer)",
                "anchor_full": "anchoring pass, full forward", "peer_attn": "peer style (eager, output_attentions)"}


def run_anchor_variant(variant: str, device: str, dtype: str, repeats: int) -> dict:
    """Time and peak memory of one forward: vanilla prefill, the Funnel anchoring pass, or the peer style."""
    from vlm_attn.passes.anchor import capture_anchor_map

    model = build_model().to(device=device, dtype=getattr(torch, dtype))
    inputs = make_inputs(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
    if variant == "peer_attn":
        model.set_attn_implementation("eager")
    layer = {}

    def once() -> None:
        with torch.no_grad():
            if variant == "prefill":
                model(**inputs)
            elif variant == "peer_attn":
                out = model(**inputs, output_attentions=True)
                layer["row"] = out.attentions[5][0, :, -1].mean(0)
            else:
                layer["map"] = capture_anchor_map(model, inputs, stop_early=variant == "anchor")

    def timed() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed()  # warm-up
    times, peaks = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated()
        else:  # reset the kernel's high-water mark so the model build and the warm-up do not count
            Path("/proc/self/clear_refs").write_text("5")
            base_mem = _status_bytes("VmRSS")
        times.append(timed())
        peaks.append(torch.cuda.max_memory_allocated() - base_mem if device.startswith("cuda")
                     else max(0, _status_bytes("VmHWM") - base_mem))
    return {"variant": variant, "time_s": min(times), "peak_bytes": max(peaks)}


def _status_bytes(field: str) -> int:
    """A memory figure (VmRSS, VmHWM) of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def interleaved_decode(variants: list[str], device: str, dtype: str, repeats: int, new_tokens: int) -> dict[str, dict]:
    """Per-call prefill seconds and per-step decode seconds of each variant, in one process on one model.

    Every round makes one generate call per variant, variants alternating (SDPA / VAR / PAI / ... / SDPA / VAR ...),
    so that the drift of a shared or noisy machine, larger than the overhead being measured, falls on all variants
    alike; the order rotates by one each round (round r starts at variant r mod n), so that a cost of running first
    or last in a round is not always paid by the same variant; the first round warms up and is dropped. Returns,
    per variant, "prefill" (one per round), "steps" (all decode steps) and "round_medians" (the median step of each
    round, for paired per-round ratios).
    """
    model = build_model().to(device=device, dtype=getattr(torch, dtype))
    inputs = make_inputs(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
    out: dict[str, dict] = {v: {"prefill": [], "steps": [], "round_medians": []} for v in variants}
    for round_ in range(repeats + 1):
        shift = round_ % len(variants)  # each round starts at the next variant: no variant always runs first
        for variant in variants[shift:] + variants[:shift]:
            handle, extra = attach(model, variant)
            clock = timed_generate(model, inputs, new_tokens, device, extra)
            detach(model, variant, handle)
            if round_ > 0:
                out[variant]["prefill"].append(clock.prefill_s)
                out[variant]["steps"] += clock.step_s
                out[variant]["round_medians"].append(summarize(clock.step_s).median)
                sys.stderr.write(f"round {round_} {variant}: prefill {clock.prefill_s:.3f} s, median step "
                                 f"{1000 * out[variant]['round_medians'][-1]:.1f} ms\n")
    return out


def _timing_table(rows: list[tuple[str, Summary, Summary]], paired: list[list[float]] | None = None) -> str:
    """Markdown table of (variant, prefill, decode) rows: prefill median (range), decode ms/step median, IQR, range,
    step count, each median as a ratio to the first row's; `paired`: per-round medians, for per-round ratios."""
    head = "| variant | prefill s median (range) | x | decode ms/step median | IQR | range | steps | x |"
    rule = "|---|---|---|---|---|---|---|---|"
    if paired is not None:
        head, rule = head + " x per round |", rule + "---|"
    lines = [head, rule]
    ref_p, ref_d = rows[0][1], rows[0][2]
    for i, (v, p, d) in enumerate(rows):
        line = (f"| {NAMES.get(v, v)} | {p.median:.3f} ({p.low:.3f}-{p.high:.3f}) | {p.ratio(ref_p):.2f} | "
                f"{1000 * d.median:.1f} | {1000 * d.q1:.1f}-{1000 * d.q3:.1f} | {1000 * d.low:.1f}-{1000 * d.high:.1f} | "
                f"{d.n} | {d.ratio(ref_d):.2f} |")
        if paired is not None:
            ratios = [a / b for a, b in zip(paired[i], paired[0])]
            line += f" {min(ratios):.2f}-{max(ratios):.2f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


# The default DynamicCache grows by torch.cat every decode step: with glibc's defaults each new multi-MiB cache tensor
# is a fresh mmap whose pages fault in on first touch, a cost that moves by several ms per step with the allocator's
# state (the largest noise in CPU decode timings here) and that PyTorch's CUDA caching allocator never pays. Keeping
# freed blocks in the heap makes every variant reuse memory the way it would on a GPU.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}
MALLOC_NOTE = "glibc keeps freed blocks (MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_=16 GiB; --no-malloc-tuning)"


def _malloc_tuned() -> bool:
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(args, queue):
    torch.set_num_threads(args.threads) if args.threads else None
    queue.put(run_anchor_variant(*args.variant_args[:3], args.repeats) if args.anchor else run_variant(*args.variant_args))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--variants", default="sdpa,eager,peer,var")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--interleave", action="store_true",
                    help="prefill and per-step decode timing only, variants alternating in one process on one model "
                         "(robust on a noisy machine); any of the variants, sdpa always first")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="CPU: leave glibc malloc at its defaults (see MALLOC_ENV)")
    ap.add_argument("--anchor", action="store_true",
                    help="measure the Visual Funnel anchoring pass against a vanilla prefill and the peer style "
                         "(variants prefill,anchor,anchor_full,peer_attn)")
    ap.add_argument("--family", choices=("llava", "smolvlm"), default="llava",
                    help="smolvlm: PAINT's prefill and peak memory on a tiled family (SmolVLM-256M's shape)")
    ap.add_argument("--views", type=int, default=3, help="--family smolvlm: image views (tiles + global view)")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    known = ANCHOR_NAMES if args.anchor and args.variants != "sdpa,eager,peer,var" else VARIANTS
    unknown = [v for v in variants if v not in known] if args.family == "llava" else []
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}: choose --variants among {','.join(known)}")
    if not args.anchor and args.family == "llava" and args.new_tokens < 2:
        raise SystemExit(f"--new-tokens {args.new_tokens} gives no decode step: use --new-tokens 2 or more")
    if args.device == "cpu" and not args.no_malloc_tuning and argv is None and not _malloc_tuned():
        # glibc reads these at start-up only: run this script again with them set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    if args.device == "cpu":
        sys.stdout.write(f"CPU allocator: {'glibc defaults' if not _malloc_tuned() else MALLOC_NOTE}\n")
    if args.anchor and args.variants == "sdpa,eager,peer,var":
        args.variants = "prefill,anchor,anchor_full,peer_attn"
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.family == "smolvlm":
        return _tiled_main(args, dtype)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    setting = (f"device: {device_name}; dtype {dtype}; prompt {TEXT_BEFORE + TEXT_AFTER + 1 + IMAGE_TOKENS} tokens; "
               f"{args.new_tokens} new tokens a call = 1 prefill + {args.new_tokens - 1} decode steps")
    if args.interleave:
        if variants[0] != "sdpa":
            variants = ["sdpa", *[v for v in variants if v != "sdpa"]]
        times = interleaved_decode(variants, args.device, dtype, args.repeats, args.new_tokens)
        if args.json:
            sys.stdout.write(json.dumps(times, indent=2) + "\n")
        sys.stdout.write(f"{setting}; variants interleaved, {args.repeats} rounds (+1 warm-up dropped); "
                         "medians, ratios of medians to vanilla SDPA\n")
        sys.stdout.write(_timing_table([(v, summarize(t["prefill"]), summarize(t["steps"])) for v, t in times.items()],
                                       [t["round_medians"] for t in times.values()]))
        return 0
    results = []
    ctx = mp.get_context("spawn")
    for variant in args.variants.split(","):
        if args.device == "cpu":  # a fresh process per variant so that peak RSS is its own
            queue = ctx.Queue()
            args.variant_args = (variant, args.device, dtype, args.repeats, args.new_tokens)
            proc = ctx.Process(target=_child, args=(args, queue))
            proc.start()
            results.append(queue.get())
            proc.join()
        elif args.anchor:
            results.append(run_anchor_variant(variant, args.device, dtype, args.repeats))
        else:
            results.append(run_variant(variant, args.device, dtype, args.repeats, args.new_tokens))
    if args.anchor:
        return _print_anchor(results, args, dtype)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    ref = results[0]
    sys.stdout.write(f"{setting}; {args.repeats} calls per variant, each in its own process (+1 warm-up); "
                     f"medians, ratios of medians to {NAMES.get(ref['variant'], ref['variant'])}\n")
    table = _timing_table([(r["variant"], summarize(r["prefill_s"]), summarize(r["decode_step_s"])) for r in results])
    rows = table.splitlines()
    rows[0] += " peak MiB | x |"
    rows[1] += "---|---|"
    for i, r in enumerate(results):
        mem_ratio = r["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] else float("nan")
        rows[i + 2] += f" {r['peak_bytes'] / 2**20:.0f} | {mem_ratio:.2f} |"
    sys.stdout.write("\n".join(rows) + "\n")
    for r in results:
        if "var_heads_redistributed" in r:
            sys.stdout.write(f"VAR was active: {r['var_visual_sinks']} visual sinks, "
                             f"{r['var_heads_redistributed']} (row, head) pairs redistributed in the last call\n")
    return 0


def _print_anchor(results: list[dict], args: argparse.Namespace, dtype: str) -> int:
    """Table of the anchoring benchmark: time and peak memory, as ratios to vanilla prefill and to the peer style."""
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    by = {r["variant"]: r for r in results}
    ref, peer = by.get("prefill", results[0]), by.get("peer_attn")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    sys.stdout.write(f"device: {device_name}; dtype {dtype}; prompt {TEXT_BEFORE + TEXT_AFTER + 1 + IMAGE_TOKENS} "
                     f"tokens; one forward; best of {args.repeats}\n")
    sys.stdout.write("| variant | time s | x prefill | x peer | peak MiB | x prefill | x peer |\n"
                     "|---|---|---|---|---|---|---|\n")

    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:.2f}" if b else "n/a"

    for r in results:
        sys.stdout.write(
            f"| {ANCHOR_NAMES.get(r['variant'], r['variant'])} | {r['time_s']:.3f} | {ratio(r['time_s'], ref['time_s'])} "
            f"| {ratio(r['time_s'], peer and peer['time_s'])} | {r['peak_bytes'] / 2**20:.0f} "
            f"| {ratio(r['peak_bytes'], ref['peak_bytes'])} | {ratio(r['peak_bytes'], peer and peer['peak_bytes'])} |\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
