"""`vlm-attn eval chair|pope`: run a benchmark with or without methods into a resumable run directory.

    vlm-attn eval chair --model llava-hf/llava-1.5-7b-hf --method var --coco-root ~/coco --out runs/chair-var
    vlm-attn eval chair --model llava-hf/llava-1.5-7b-hf --hf-dataset tsunghanwu/mscoco_chair --out runs/chair-hf
    vlm-attn eval pope --model llava-hf/llava-1.5-7b-hf --pope-dir pope/gqa --image-root ~/gqa/images --parse vcd ...
    vlm-attn eval pope --model llava-hf/llava-1.5-7b-hf --pope-dir pope/ --coco-root ~/coco --out runs/pope-base
    accelerate launch --num_processes 4 -m vlm_attn.cli eval pope ...     # one slice per process, merged at the end
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from ..errors import UserError
from .checks import check_against_model, check_method_files, check_model_args
from .common import add_method_args, add_model_args, build_configs, parse_method_args, write


def _add_run_args(p: argparse.ArgumentParser, default_tokens: int, token_note: str) -> None:
    add_model_args(p)
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of --model; recorded")
    add_method_args(p, vqa=False)  # the task's prompt already carries its answer instruction
    p.add_argument("--out", required=True,
                   help="run directory (e.g. runs/NAME): samples.rank*.jsonl, samples.jsonl, run.json, metrics.json")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: finished samples are kept and skipped (same settings needed)")
    p.add_argument("--retry-errors", action="store_true",
                   help="with --resume: generate the samples recorded as errors again (e.g. after fixing an image); "
                        "their error records are replaced")
    p.add_argument("--batch-size", type=int, default=8, help="samples per generate call, left-padded (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"generation length (default {default_tokens}{token_note})")
    p.add_argument("--limit", type=int, default=None,
                   help="run only the first N samples (CHAIR: images of the list; POPE: questions of each split)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the image sample, of torch and (with --do-sample) of each batch's draws (default 0)")
    p.add_argument("--do-sample", action="store_true",
                   help="multinomial sampling instead of greedy decoding (VCD's and ICD's published protocols)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do-sample; default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --do-sample; default 1)")
    p.add_argument("--prompt", default=None, help="override the task's prompt (recorded in metrics.json)")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")


def cmd_eval(args: argparse.Namespace) -> int:
    """Check every input, take the run folder's writer lock, then load the model and run.

    The order matters: a bad question file, image list, annotation file, prompt or setting, a resume whose flags
    differ from the run's, and a run folder that another run is writing are all refused (UserError / RunDirError /
    FileNotFoundError, one line) before the model is loaded or a sample generated.
    """
    from ..eval import tasks
    from ..eval.runner import RunDir, distributed_context
    from ..loading import load_model

    options = tasks.RunOptions(
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed, limit=args.limit,
        resume=args.resume, progress=not args.no_progress, revision=args.revision, command=sys.argv,
        arguments={k: v for k, v in vars(args).items()
                   if k != "func" and not (k.startswith("method__") and v is None)},  # unset method flags left out
        retry_errors=args.retry_errors, do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
    )
    tasks.check_options(options)
    spec = parse_method_args(args)  # method flags and --method-config, before any data or model is read
    check_model_args(args)
    check_method_files(spec.configs)
    plan: tasks.ChairPlan | tasks.PopePlan
    if args.task == "chair":
        plan = tasks.plan_chair(args.coco_root, options, image_list=args.image_list, num_images=args.num_images,
                                lemmatizer=args.lemmatizer, prompt=args.prompt, hf_dataset=args.hf_dataset,
                                hf_split=args.hf_split)
    else:
        if args.pope_dir is None and not args.pope_file and args.pope_hf is None:
            args.pope_hf = tasks.pope_lib.HF_DATASET
        if (args.pope_dir is not None or args.pope_file) and args.coco_root is None and args.image_root is None:
            raise UserError("POPE question files name image files: pass --coco-root (the folder holding "
                            "val2014/) or --image-root (the folder holding them, e.g. GQA's images/)")
        splits = tasks.load_pope_splits(args.pope_dir, args.pope_file or (), args.pope_hf, args.splits)
        plan = tasks.plan_pope(splits, options, coco_root=args.coco_root, parse_mode=args.parse, prompt=args.prompt,
                               image_root=args.image_root)
    run_dir = RunDir(args.out)
    # run_samples checks again with the methods and the model's dtype, on every process
    run_dir.check(tasks.resume_settings(plan, args.model, args.revision), resume=args.resume)
    dist = distributed_context()
    with run_dir.writer_lock(dist.rank):
        model, processor = load_model(
            args.model, device=args.device or dist.device, dtype=args.dtype,
            **({"revision": args.revision} if args.revision else {}),
        )
        configs = build_configs(spec, model)
        check_against_model(configs, model, processor)
        if spec.input_config is not None:
            configs.append(spec.input_config)
        execute = tasks.execute_chair if args.task == "chair" else tasks.execute_pope
        record = execute(model, processor, args.model, plan, args.out, configs, options, dist)  # type: ignore[arg-type]
    if record is not None:
        _summary(record, args.out)
    return 0


def _summary(record: dict[str, Any], out: str) -> None:
    from ..eval.report import RunRecord, markdown_table

    run = RunRecord(run=Path(out).name, **record)
    write(markdown_table([run]).rstrip())
    errors = record["metrics"].get("n_errors", 0)
    write(f"{record['metrics'].get('n_scored')} samples scored, {errors} errors -> {Path(out) / 'metrics.json'}")


def register(sub: Any) -> None:
    ev = sub.add_parser(
        "eval",
        help="run CHAIR or POPE into a resumable run directory and write metrics.json",
        description="Greedy (or, with --do-sample, seeded sampling), batched (left-padded) generation over a benchmark. Every finished sample is appended "
                    "to the run directory at once, so a killed run continues with --resume without losing or "
                    "repeating a sample; under `accelerate launch` each process runs a slice and the main "
                    "process merges and scores. Unreadable images are recorded as errors and skipped "
                    "(--resume --retry-errors runs them again). Inputs are checked before the model is loaded; "
                    "a run folder that another run is writing is refused. "
                    "metrics.json records model, revision, method configs, dataset hashes, image list, seed, "
                    "package versions and times; compare runs with `vlm-attn report`.",
    )
    tasks_sub = ev.add_subparsers(dest="task", required=True, metavar="{chair,pope}")

    chair = tasks_sub.add_parser(
        "chair", help="CHAIR object hallucination on COCO val2014 captions",
        description=textwrap.fill('Describe a fixed sample of COCO val2014 images ("Please describe this image in '
                                  "detail.\") and score CHAIR_S, CHAIR_I, Recall, Precision, F1 and Len. Ground truth "
                                  "and images from a COCO root or the HF mscoco_chair copy (--hf-dataset).", 100),
        epilog="examples:\n"
               "  vlm-attn eval chair --model llava-hf/llava-1.5-7b-hf --method var --coco-root ~/coco --out runs/var\n"
               "  vlm-attn eval chair --model llava-hf/llava-1.5-7b-hf --hf-dataset tsunghanwu/mscoco_chair "
               "--image-list opera/greedy.jsonl --out runs/base",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_args(chair, 512, "; 64 is the short variant")
    chair.add_argument("--coco-root", default=None,
                       help="folder holding val2014/ and annotations/{instances,captions}_val2014.json")
    chair.add_argument("--hf-dataset", default=None,
                       help="instead of --coco-root: the HF copy with images and ground truth inside "
                            "(tsunghanwu/mscoco_chair, as lmms-eval uses; a hub name or a save_to_disk folder)")
    chair.add_argument("--hf-split", default="test", help="split of --hf-dataset (default test)")
    chair.add_argument("--num-images", type=int, default=500,
                       help="images sampled from val2014 with --seed (default 500); ignored with --image-list")
    chair.add_argument("--image-list", default=None,
                       help="use this image list instead: a JSON list or {image_ids: [...]} of ids, file names or "
                            "{image_id} objects, a JSONL caption file (a paper's 500 images), or one id/file per line")
    chair.add_argument("--lemmatizer", choices=["auto", "nltk", "offline"], default="auto",
                       help="nltk reference path (needs its data), offline, or auto (nltk when available)")
    chair.set_defaults(func=cmd_eval)

    pope = tasks_sub.add_parser(
        "pope", help="POPE yes/no object probing (random, popular, adversarial)",
        description=textwrap.fill("Ask each POPE question with LLaVA's short-answer instruction and report accuracy, "
                                  "precision, recall, F1 and yes-ratio per split and averaged. Questions come from "
                                  "--pope-dir, --pope-file or the lmms-lab/POPE dataset (--pope-hf, the default when "
                                  "no files are given); the A-OKVQA and GQA question files read their images from "
                                  "--image-root.", 100),
        epilog="examples:\n"
               "  vlm-attn eval pope --model llava-hf/llava-1.5-7b-hf --pope-dir pope/coco --coco-root ~/coco "
               "--out runs/pope\n"
               "  vlm-attn eval pope --model llava-hf/llava-1.5-7b-hf --pope-dir pope/gqa --image-root "
               "~/gqa/images --parse recorder --out runs/gqa",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_args(pope, 128, "")
    pope.add_argument("--coco-root", default=None, help="folder holding val2014/ (needed with question files)")
    pope.add_argument("--image-root", default=None,
                      help="folder the question files' image names are relative to, instead of COCO val2014 "
                           "(GQA's images/ for gqa_pope_*.json; A-OKVQA's questions name val2014 files)")
    pope.add_argument("--pope-dir", default=None, help="folder with coco_pope_{random,popular,adversarial}.jsonl")
    pope.add_argument("--pope-file", action="append", default=None,
                      help="one POPE question file (repeatable; the split is read from the name)")
    pope.add_argument("--pope-hf", nargs="?", const="lmms-lab/POPE", default=None,
                      help="load questions and images from this HF dataset (default lmms-lab/POPE; needs network "
                           "or a warm cache)")
    pope.add_argument("--splits", type=lambda s: [x for x in s.split(",") if x],
                      default=list(("random", "popular", "adversarial")),
                      help="comma-separated splits to run (default random,popular,adversarial)")
    pope.add_argument("--parse", choices=["official", "lmms-eval", "recorder", "vcd"], default="official",
                      help="answer parsing: POPE's official rule (default), lmms-eval's exact match, OPERA/HALC's "
                           "recorder or VCD's substring rule (recorded in metrics.json)")
    pope.set_defaults(func=cmd_eval)
