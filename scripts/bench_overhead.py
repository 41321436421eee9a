"""Speed and memory of vlm-attn against the unpatched model, in one run (issue 2's benchmark).

Builds a LLaVA-shaped random model (language model: hidden 1024, 8 layers, 16 heads; 576 image tokens from a
336px CLIP-shaped tower; a ~600-token prompt) and measures, for each variant, prefill time, decode ms/token over
32 new tokens and peak memory, each as a ratio to vanilla SDPA:

- vanilla SDPA              the unpatched model (reference)
- vanilla eager             attn_implementation="eager"
- peer style                eager with output_attentions and output_hidden_states (how the official VAR code runs)
- VAR (vlm-attn)            SDPA with VAR applied through vlm_attn.apply
- pai, paint                PAI / PAINT amplification without guidance (target: decode <= 1.05x; PAINT's vision
                            capture shows in its prefill ratio, target <= 1.05x)
- pai+guidance, ...         with the image-free guidance pass (a second forward per step: compare with 2x)
  (select with --variants sdpa,pai,paint,pai+guidance,paint+guidance)

Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU each variant runs in a fresh subprocess and the
figure is the growth of peak RSS during generation. On CPU the script restarts itself with glibc malloc told to keep
freed blocks (see MALLOC_ENV; --no-malloc-tuning to skip), so that the KV cache's per-step torch.cat does not
page-fault fresh memory, a multi-ms, state-dependent cost that a GPU's caching allocator does not have. Usage:

    python scripts/bench_overhead.py [--device cuda] [--dtype bfloat16] [--repeats 3] [--new-tokens 32]
    python scripts/bench_overhead.py --anchor    # Visual Funnel anchoring pass vs vanilla prefill vs peer style
    python scripts/bench_overhead.py --family smolvlm [--views 3] [--interleave]   # PAINT on a tiled family

`--family smolvlm` builds a random model of SmolVLM-256M's real shape (Idefics3: SigLIP 768 wide, 12 layers, 12 heads,
512px views of 1024 patches, pixel shuffle 4 -> 64 tokens a view; Llama text 576 wide, 30 layers) and a prompt with
`--views` views (tiles + the global view, each its own run of image tokens), and measures PAINT's prefill (one
`generate` step) and peak memory against vanilla SDPA: each variant in a fresh process, peak = growth of peak RSS
over its first call (CUDA: max_memory_allocated), time = best of --repeats warm calls. With --interleave the prefill
times come from one process, variants alternating in each round (best and spread reported).
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

import torch

IMAGE_TOKENS = 576
TEXT_BEFORE, TEXT_AFTER = 5, 19  # ~600-token prompt in all


def build_model(seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vision = dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                  num_attention_heads=4, image_size=336, patch_size=14)
    text = dict(model_type="llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                num_attention_heads=16, num_key_value_heads=16, vocab_size=32064, max_position_embeddings=2048)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger weights than the 0.02 default, so attention is not uniform
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def make_inputs(device: str):
    gen = torch.Generator().manual_seed(1)
    before = torch.randint(3, 32000, (TEXT_BEFORE,), generator=gen)
    after = torch.randint(3, 32000, (TEXT_AFTER,), generator=gen)
    ids = torch.cat([torch.tensor([1]), before, torch.full((IMAGE_TOKENS,), 32000), after])[None]
    pixels = torch.randn(1, 3, 336, 336, generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": pixels.to(device)}


def run_variant(variant: str, device: str, dtype: str, repeats: int, new_tokens: int) -> dict:
    import vlm_attn

    model = build_model().to(device=device, dtype=getattr(torch, dtype))
    inputs = make_inputs(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
    extra: dict = {}
    handle = None
    if variant in ("eager", "peer"):
        model.set_attn_implementation("eager")
    if variant == "peer":
        extra = dict(output_attentions=True, output_hidden_states=True, return_dict_in_generate=True)
    if variant == "var":
        handle = vlm_attn.apply(model, vlm_attn.VARConfig(sink_dims=(1, 2, 3), tau=3.0, rho=0.3))
    guided = variant.endswith("+guidance")
    method = variant.split("+")[0]
    if method == "pai":
        handle = vlm_attn.apply(model, vlm_attn.PAIConfig(alpha=0.2, guidance=guided))
    if method == "paint":
        handle = vlm_attn.apply(model, vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=guided))

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(n):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            # guidance: a fresh processor (its own image-free cache) per generate call, as handle.generate does
            per_call = {"logits_processor": handle.logits_processor(inputs)} if guided else {}
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, **extra, **per_call)
        sync()
        return time.perf_counter() - t0

    timed(2)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    rss_before = _rss_now()
    prefill, total = [], []
    for _ in range(repeats):
        prefill.append(timed(1))
        total.append(timed(new_tokens))
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = max(0, _peak_rss() - rss_before)
    p, t = min(prefill), min(total)  # the minimum is the least disturbed by other load on the machine
    out = {"variant": variant, "prefill_s": p, "decode_ms_per_token": 1000 * (t - p) / (new_tokens - 1),
           "peak_bytes": peak}
    if handle is not None and variant != "var":
        out["method_report"] = {k: v for k, v in handle.report().get(variant.split("+")[0], {}).items()
                                if k in ("active", "images", "local_tokens", "summary_tokens")}
        handle.remove()
        handle = None
    if handle is not None:
        report = handle.report()["var"]
        out["var_heads_redistributed"] = report["total_heads_redistributed"]
        out["var_visual_sinks"] = sum(report["visual_sinks"].values())
        handle.remove()
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
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger weights than the 0.02 default, so attention is not uniform
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


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
    """Wall and process-CPU seconds of one `generate` step (prefill, vision encoder included).

    CPU seconds count this process's threads only, so other load on a shared machine moves them far less."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def run_tiled_variant(variant: str, device: str, dtype: str, repeats: int, views: int) -> dict:
    """Peak memory of the first prefill and the best of `repeats` warm prefills, for sdpa or paint."""
    import vlm_attn

    model, inputs = _tiled_setup(device, dtype, views)
    handle = vlm_attn.apply(model, vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=False)) if variant == "paint" else None
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # reset the kernel's high-water mark: the model build does not count
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_bytes("VmRSS")
    first = _prefill(model, inputs, device)[0]
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status_bytes("VmHWM")) - base
    runs = [_prefill(model, inputs, device) for _ in range(repeats)]
    times, cpu = [w for w, _ in runs], [c for _, c in runs]
    out = {"variant": variant, "first_s": first, "prefill_s": min(times), "times": times, "cpu_s": min(cpu),
           "cpu_times": cpu, "peak_bytes": max(0, peak)}
    if handle is not None:
        out["method_report"] = {k: v for k, v in handle.report()["paint"].items()
                                if k in ("active", "images", "local_tokens", "summary_tokens")}
        handle.remove()
    return out


def interleaved_tiled(device: str, dtype: str, repeats: int, views: int) -> dict[str, list[tuple[float, float]]]:
    """Prefill (wall, CPU) seconds of sdpa and paint in one process, alternating in every round (first one dropped)."""
    import vlm_attn

    model, inputs = _tiled_setup(device, dtype, views)
    times: dict[str, list[tuple[float, float]]] = {"sdpa": [], "paint": []}
    for round_ in range(repeats + 1):
        for variant in times:
            handle = (vlm_attn.apply(model, vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=False))
                      if variant == "paint" else None)
            t = _prefill(model, inputs, device)
            if handle is not None:
                handle.remove()
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
        ref_w, ref_c = (min(t[i] for t in times["sdpa"]) for i in (0, 1))
        sys.stdout.write(f"interleaved, {args.repeats} rounds\n| variant | best wall s | x | best CPU s | x | "
                         "all wall s | all CPU s |\n|---|---|---|---|---|---|---|\n")
        for v, ts in times.items():
            w, c = min(t[0] for t in ts), min(t[1] for t in ts)
            sys.stdout.write(f"| {v} | {w:.2f} | {w / ref_w:.3f} | {c:.2f} | {c / ref_c:.3f} | "
                             f"{', '.join(f'{t[0]:.2f}' for t in ts)} | {', '.join(f'{t[1]:.2f}' for t in ts)} |\n")
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
    ref = results[0]
    sys.stdout.write("| variant | prefill wall s (best) | x | CPU s (best) | x | all wall s | peak MiB | x |\n"
                     "|---|---|---|---|---|---|---|---|\n")
    for r in results:
        sys.stdout.write(f"| {r['variant']} | {r['prefill_s']:.2f} | {r['prefill_s'] / ref['prefill_s']:.3f} | "
                         f"{r['cpu_s']:.2f} | {r['cpu_s'] / ref['cpu_s']:.3f} | "
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


def interleaved_decode(
    variants: list[str], device: str, dtype: str, repeats: int, new_tokens: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Prefill seconds and decode ms/token per variant in one process, variants alternating within every repeat.

    On a shared or noisy machine, drift between the start and the end of a run is larger than the overhead being
    measured; alternating SDPA / method / SDPA / method ... and taking each variant's minimum cancels it out.
    Attention-only variants (sdpa and the methods without guidance).
    """
    import vlm_attn

    model = build_model().to(device=device, dtype=getattr(torch, dtype))
    inputs = make_inputs(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
    configs = {"sdpa": None, "var": vlm_attn.VARConfig(sink_dims=(1, 2, 3), tau=3.0, rho=0.3),
               "pai": vlm_attn.PAIConfig(alpha=0.2, guidance=False),
               "paint": vlm_attn.PAINTConfig(alpha=0.7, beta=0.4, guidance=False)}

    def timed(n: int) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    best: dict[str, float] = {}
    prefill: dict[str, float] = {}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for variant in variants:
            handle = vlm_attn.apply(model, configs[variant]) if configs[variant] is not None else None
            first = timed(1)  # prefill and one token
            per_token = (timed(new_tokens) - first) / (new_tokens - 1)
            if handle is not None:
                handle.remove()
            if _ > 0:
                best[variant] = min(best.get(variant, float("inf")), per_token)
                prefill[variant] = min(prefill.get(variant, float("inf")), first)
    return best, prefill


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
                    help="prefill and decode timing only, variants alternating in one process (robust on a noisy machine); "
                         "variants among sdpa,var,pai,paint")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="CPU: leave glibc malloc at its defaults (see MALLOC_ENV)")
    ap.add_argument("--anchor", action="store_true",
                    help="measure the Visual Funnel anchoring pass against a vanilla prefill and the peer style "
                         "(variants prefill,anchor,anchor_full,peer_attn)")
    ap.add_argument("--family", choices=("llava", "smolvlm"), default="llava",
                    help="smolvlm: PAINT's prefill and peak memory on a tiled family (SmolVLM-256M's shape)")
    ap.add_argument("--views", type=int, default=3, help="--family smolvlm: image views (tiles + global view)")
    args = ap.parse_args(argv)
    if args.device == "cpu" and not args.no_malloc_tuning and argv is None and not _malloc_tuned():
        # glibc reads these at start-up only: run this script again with them set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    if args.device == "cpu":
        sys.stdout.write(f"CPU allocator: {'glibc defaults' if not _malloc_tuned() else MALLOC_NOTE}\n")
    if args.anchor and args.variants == "sdpa,eager,peer,var":
        args.variants = "prefill,anchor,anchor_full,peer_attn"
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.family == "smolvlm":
        return _tiled_main(args, dtype)
    if args.interleave:
        variants = [v for v in args.variants.split(",") if v]
        if variants[0] != "sdpa":
            variants.insert(0, "sdpa")
        best, prefill = interleaved_decode(variants, args.device, dtype, args.repeats, args.new_tokens)
        sys.stdout.write(f"variants interleaved, best of {args.repeats} rounds ({args.device}, {dtype})\n")
        sys.stdout.write("| variant | prefill s | x | decode ms/tok | x |\n|---|---|---|---|---|\n")
        for v, ms in best.items():
            sys.stdout.write(f"| {v} | {prefill[v]:.3f} | {prefill[v] / prefill['sdpa']:.2f} | {1000 * ms:.1f} | "
                             f"{ms / best['sdpa']:.2f} |\n")
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
    ref = results[0]
    names = {"sdpa": "vanilla SDPA", "eager": "vanilla eager", "peer": "peer style (eager + outputs)",
             "var": "VAR (vlm-attn)", "pai": "PAI, no guidance", "paint": "PAINT, no guidance",
             "pai+guidance": "PAI + guidance (vs 2x)", "paint+guidance": "PAINT + guidance (vs 2x)"}
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    sys.stdout.write(f"device: {device_name}; dtype {dtype}; prompt {TEXT_BEFORE + TEXT_AFTER + 1 + IMAGE_TOKENS} "
                     f"tokens; {args.new_tokens} new tokens; best of {args.repeats}\n")
    sys.stdout.write("| variant | prefill s | x | decode ms/tok | x | peak MiB | x |\n|---|---|---|---|---|---|---|\n")
    for r in results:
        mem_ratio = r["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] else float("nan")
        sys.stdout.write(
            f"| {names.get(r['variant'], r['variant'])} | {r['prefill_s']:.3f} | {r['prefill_s'] / ref['prefill_s']:.2f} "
            f"| {r['decode_ms_per_token']:.1f} | {r['decode_ms_per_token'] / ref['decode_ms_per_token']:.2f} "
            f"| {r['peak_bytes'] / 2**20:.0f} | {mem_ratio:.2f} |\n"
        )
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
