"""`vlm-attn tune chair`: a grid over a method's settings on a tuning split disjoint from the evaluation images.

    vlm-attn tune chair --model llava-hf/llava-1.5-7b-hf --method var --grid p=0.6,0.8 --grid rho=0.5,0.9 \\
        --coco-root ~/coco --tune-num-images 100 --out runs/tune-var
    vlm-attn eval chair --model ... --method var --method-config runs/tune-var/chosen_config.json ...

Every grid point (and the baseline, when the objective needs it) is an ordinary resumable CHAIR run under
``OUT/points/NNN`` (``OUT/baseline``); ``OUT/tune.json`` records the grid, the split (tuning images and the
evaluation list they avoid), every point's metrics and intervals, the objective and the choice;
``OUT/chosen_config.json`` is the chosen point as a ``--method-config`` file.
"""

from __future__ import annotations

import argparse
import textwrap
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
from .checks import check_against_model, check_method_files, check_model_args
from .common import MethodSpec, add_method_args, add_model_args, build_configs, cli_methods, parse_method_args, write

TUNE_FILE = "tune.json"
PLAN_FILE = "tune_plan.json"
SPLIT_FILE = "tune_split.json"
CHOSEN_FILE = "chosen_config.json"
TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _parse_value(cls: type, setting: str, raw: Any, from_text: bool) -> Any:
    """One grid value, read with the setting's own rule (text from --grid) and validated by it."""
    from ..methods.config import Bool, ConfigError

    rule = cls.settings()[setting].metadata.get("rule")
    value = raw
    if from_text and rule is not None:
        if isinstance(rule, Bool):
            if raw.lower() not in TRUE + FALSE:
                raise UserError(f"--grid {cls.name}.{setting}: {raw!r} is not true or false")
            value = raw.lower() in TRUE
        else:
            try:
                value = rule.parse(raw)
            except ValueError as exc:
                raise UserError(f"--grid {cls.name}.{setting}: {raw!r} is not {rule.describe()} ({exc})") from None
    if rule is not None:
        try:
            rule(f"{cls.__name__}.{setting}", value)
        except ConfigError as exc:
            raise UserError(f"--grid: {exc}") from None
    return value


def build_grid(args: argparse.Namespace, spec: MethodSpec) -> dict[tuple[str, str], list[Any]]:
    """The grid of --grid flags and --grid-file, every setting known to its method and every value valid."""
    from ..eval.tune import parse_grid_flags, read_grid_file

    from_flags = parse_grid_flags(args.grid or [], spec.names)
    from_file = read_grid_file(args.grid_file, spec.names) if args.grid_file else {}
    both = set(from_flags) & set(from_file)
    if both:
        method, setting = sorted(both)[0]
        raise UserError(f"{method}.{setting} is in both --grid and --grid-file; give it once")
    known = cli_methods()
    grid: dict[tuple[str, str], list[Any]] = {}
    for source, text in ((from_flags, True), (from_file, False)):
        for (method, setting), values in source.items():
            cls = known[method].config
            if setting not in cls.settings():
                raise UserError(f"--grid {method}.{setting}: {cls.__name__} has no setting {setting!r}; known: "
                                f"{', '.join(cls.settings())}")
            grid[(method, setting)] = [_parse_value(cls, setting, v, text) for v in values]
    if not grid:
        raise UserError("no grid: give --grid SETTING=V1,V2 (repeatable) or --grid-file FILE")
    return grid


def point_spec(spec: MethodSpec, point: Mapping[str, Mapping[str, Any]]) -> MethodSpec:
    """``spec`` with the point's settings over the base ones (--method-config and flags), configs rebuilt."""
    known = cli_methods()
    settings = {name: {**spec.settings.get(name, {}), **point.get(name, {})} for name in spec.names}
    configs = tuple(known[name].config(**settings[name]) for name in spec.names)
    return MethodSpec(spec.names, settings, configs)


def _image_lists(args: argparse.Namespace) -> tuple[list[int], dict[str, Any], list[int], dict[str, Any]]:
    """(evaluation ids, how they were chosen, tuning ids, how they were chosen); overlap refused."""
    from ..eval import tasks
    from ..eval.coco import coco_val2014, image_ids
    from ..eval.tune import tuning_split

    coco = coco_val2014(args.coco_root)
    coco.check()
    instances = coco.load_instances()
    pool = image_ids(instances)
    if args.eval_image_list:
        eval_ids, eval_info = tasks.chair_image_list(coco, args.eval_image_list, instances=instances)
    else:
        eval_ids, eval_info = tasks.chair_image_list(coco, None, args.eval_num_images, args.eval_seed, instances)
    listed = None
    if args.tune_image_list:
        listed, tune_info = tasks.chair_image_list(coco, args.tune_image_list, instances=instances)
    else:
        tune_info = {"source": "sample_image_ids over val2014 minus the evaluation list", "seed": args.tune_seed,
                     "n": args.tune_num_images}
    tune_ids = tuning_split(pool, eval_ids, listed, args.tune_num_images, args.tune_seed)
    return eval_ids, eval_info, tune_ids, tune_info


def cmd_tune(args: argparse.Namespace) -> int:
    """Check everything (grid, split, objective, run folders), load the model once, run the points, choose."""
    from ..eval import tasks
    from ..eval.coco import save_image_list
    from ..eval.runner import RunDir
    from ..eval.tune import grid_points, objective, point_label
    from ..loading import load_model

    rule = objective(args.objective)
    options = tasks.RunOptions(
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed, resume=args.resume,
        progress=not args.no_progress, revision=args.revision, command=sys.argv,
        arguments={k: v for k, v in vars(args).items() if k != "func" and not (k.startswith("method__") and v is None)},
    )
    tasks.check_options(options)
    spec = parse_method_args(args)
    if not spec.names:
        raise UserError("tune needs the method whose settings to tune: add --method NAME (e.g. --method var)")
    check_model_args(args)
    check_method_files(spec.configs)
    grid = build_grid(args, spec)
    points = grid_points(grid)
    specs = [point_spec(spec, p) for p in points]  # a bad combination fails here, before any model
    for s in specs:
        check_method_files(s.configs)
    out = Path(args.out)
    eval_ids, eval_info, tune_ids, tune_info = _image_lists(args)
    plan_record = _json_ready({
        "task": "chair", "model": args.model, "revision": args.revision, "methods": list(spec.names),
        "base_settings": spec.settings, "grid": [{"method": m, "setting": s, "values": v} for (m, s), v in grid.items()],
        "objective": rule.name, "tune_images": tune_ids, "eval_images": eval_ids,
    })
    if out.exists() and any(out.iterdir()):
        if not args.resume:
            raise UserError(f"--out {out} is not empty; pass --resume to continue that tuning run, or choose a new "
                            "--out")
        started = json.loads((out / PLAN_FILE).read_text(encoding="utf-8")) if (out / PLAN_FILE).is_file() else None
        if started != plan_record:
            changed = [k for k in plan_record if started is None or started.get(k) != plan_record[k]]
            raise UserError(f"cannot resume {out}: the tuning run was started with other {', '.join(changed)}; rerun "
                            "with the original flags or choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN_FILE).write_text(json.dumps(plan_record, indent=1) + "\n", encoding="utf-8")
    split_file = save_image_list(out / SPLIT_FILE, tune_ids, source=tune_info.get("source"),
                                 seed=tune_info.get("seed"), disjoint_from=eval_info)
    plan = tasks.plan_chair(args.coco_root, options, image_list=split_file, lemmatizer=args.lemmatizer,
                            prompt=args.prompt)
    runs = ([("baseline", out / "baseline", None)] if rule.needs_baseline else []) + [
        (point_label(p), out / "points" / f"{i:03d}", s) for i, (p, s) in enumerate(zip(points, specs))]
    for _, folder, _ in runs:
        RunDir(folder).check(tasks.resume_settings(plan, args.model, args.revision), resume=args.resume)
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype,
                                  **({"revision": args.revision} if args.revision else {}))
    records: dict[str, dict[str, Any]] = {}
    for label, folder, s in runs:
        configs: list[Any] = []
        if s is not None:
            configs = build_configs(s, model)
            check_against_model(configs, model, processor)
            if s.input_config is not None:
                configs.append(s.input_config)
        write(f"tune: {label} -> {folder}")
        record = tasks.execute_chair(model, processor, args.model, plan, folder, configs, options)
        records[str(folder)] = record  # type: ignore[assignment]
    return _choose_and_write(args, out, rule, grid, points, specs, runs, records, plan_record, tune_info, eval_info)


def _choose_and_write(args: argparse.Namespace, out: Path, rule: Any, grid: Mapping, points: list, specs: list,
                      runs: list, records: Mapping[str, Mapping[str, Any]], plan_record: Mapping[str, Any],
                      tune_info: Mapping[str, Any], eval_info: Mapping[str, Any]) -> int:
    from ..eval.tasks import package_versions
    from ..eval.tune import choose

    floor = None
    baseline = None
    if rule.needs_baseline:
        base = records[str(out / "baseline")]
        if not base.get("intervals"):
            raise UserError(f"{out / 'baseline'}: the baseline run has no bootstrap intervals (see the warning "
                            f"above), so {rule.name} has no floor; fix the run or choose an objective without one")
        floor = base["intervals"]["metrics"][rule.floor_metric][0]
        baseline = {"run": "baseline", "metrics": base["metrics"], "intervals": base["intervals"]["metrics"],
                    "floor": {rule.floor_metric: floor}}
    point_runs = [r for r in runs if r[2] is not None]
    rows = []
    for i, ((label, folder, s), point) in enumerate(zip(point_runs, points)):
        rec = records[str(folder)]
        rows.append({"index": i, "label": label, "point": point, "settings": s.settings,
                     "run": str(folder.relative_to(out)), "metrics": rec["metrics"],
                     "intervals": (rec.get("intervals") or {}).get("metrics")})
    chosen, feasible = choose(rule, rows, floor)
    for row, ok in zip(rows, feasible):
        row["feasible"] = ok
    document = _json_ready({
        **plan_record,
        "objective": {"name": rule.name, "description": rule.description, "metric": rule.metric,
                      "minimise": rule.minimise, "floor_metric": rule.floor_metric},
        "split": {"tune": {**tune_info, "image_ids": plan_record["tune_images"], "file": SPLIT_FILE},
                  "eval": {**{k: v for k, v in eval_info.items()}, "image_ids": plan_record["eval_images"]}},
        "baseline": baseline, "points": rows, "chosen": None if chosen is None else {
            "index": chosen, "label": rows[chosen]["label"], "settings": rows[chosen]["settings"],
            "config_file": CHOSEN_FILE},
        "versions": package_versions(), "command": list(sys.argv),
    })
    (out / TUNE_FILE).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    _print_table(rows, chosen, rule, floor)
    if chosen is None:
        raise UserError(f"no grid point keeps {rule.floor_metric} >= {floor:.4f} (the lower end of the baseline's "
                        f"interval); see {out / TUNE_FILE} and widen the grid")
    config_path = Path(args.config_out) if args.config_out else out / CHOSEN_FILE
    config_path.write_text(json.dumps(_json_ready(rows[chosen]["settings"]), indent=1) + "\n", encoding="utf-8")
    write(f"chosen: {rows[chosen]['label']} -> {config_path} (use it with --method-config); record: "
          f"{out / TUNE_FILE}")
    return 0


def _print_table(rows: list[dict[str, Any]], chosen: int | None, rule: Any, floor: float | None) -> None:
    write(f"objective {rule.name}: {rule.description}" + (f" ({rule.floor_metric} >= {100 * floor:.1f})"
                                                          if floor is not None else ""))
    write("| # | settings | CHAIR_S | CHAIR_I | Recall | F1 | feasible | chosen |")
    write("|---|---|---|---|---|---|---|---|")
    for row in rows:
        m = row["metrics"]
        write(f"| {row['index']} | {row['label']} | {100 * m['CHAIR_S']:.1f} | {100 * m['CHAIR_I']:.1f} | "
              f"{100 * m['Recall']:.1f} | {100 * m['F1']:.1f} | {'yes' if row['feasible'] else 'no'} | "
              f"{'*' if row['index'] == chosen else ''} |")


def register(sub: Any) -> None:
    from ..eval.tune import OBJECTIVES

    tune = sub.add_parser(
        "tune", help="grid-search a method's settings on a tuning split disjoint from the evaluation images",
        description=textwrap.fill("Runs every point of a grid over a method's settings as a resumable CHAIR run on tuning "
                    "images that share none with the evaluation list (a listed split that overlaps is refused), "
                    "picks one point by a named objective and writes it as a --method-config file. tune.json "
                    "records the grid, the split, every point's metrics with intervals and the choice.", 100),
        epilog="example:\n  vlm-attn tune chair --model toy-vlm --method var --grid tau=2,4 --coco-root toy_coco \\\n"
               "      --tune-num-images 20 --eval-num-images 100 --out runs/tune-var\n"
               "objectives: " + "; ".join(f"{o.name}: {o.description}" for o in OBJECTIVES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks_sub = tune.add_subparsers(dest="task", required=True, metavar="{chair}")
    chair = tasks_sub.add_parser(
        "chair", help="tune on CHAIR (COCO val2014 captions)",
        description="Grid search on CHAIR; see `vlm-attn tune --help`.",
        epilog="example: vlm-attn tune chair --method var --grid p=0.6,0.8 --coco-root ~/coco --out runs/tune-var",
    )
    add_model_args(chair)
    chair.add_argument("--revision", default=None, help="hub revision of --model; recorded")
    add_method_args(chair, vqa=False)
    chair.add_argument("--grid", action="append", default=None, metavar="SETTING=V1,V2",
                       help="values of one setting (repeatable; METHOD.SETTING with several methods); list-valued "
                            "settings go in --grid-file")
    chair.add_argument("--grid-file", default=None, metavar="FILE",
                       help='JSON or YAML grid: {"var": {"p": [0.6, 0.8], "rho": [0.5, 0.9]}}')
    chair.add_argument("--objective", default="min_chair_i_recall_ge_baseline_ci", choices=list(OBJECTIVES),
                       help="how the point is chosen (default min_chair_i_recall_ge_baseline_ci; see tune --help)")
    chair.add_argument("--coco-root", required=True,
                       help="folder holding val2014/ and annotations/{instances,captions}_val2014.json")
    chair.add_argument("--tune-image-list", default=None,
                       help="the tuning images (refused when any is in the evaluation list)")
    chair.add_argument("--tune-num-images", type=int, default=100,
                       help="else sample this many tuning images outside the evaluation list (default 100)")
    chair.add_argument("--tune-seed", type=int, default=1, help="seed of that sample (default 1)")
    chair.add_argument("--eval-image-list", default=None,
                       help="the evaluation list to keep out (default: the images `eval chair` samples with "
                            "--eval-num-images and --eval-seed)")
    chair.add_argument("--eval-num-images", type=int, default=500, help="evaluation images (default 500)")
    chair.add_argument("--eval-seed", type=int, default=0, help="the evaluation's --seed (default 0)")
    chair.add_argument("--lemmatizer", choices=["auto", "nltk", "offline"], default="auto",
                       help="CHAIR lemmatiser (default auto)")
    chair.add_argument("--out", required=True, help="folder of the tuning run (points/, baseline/, tune.json)")
    chair.add_argument("--config-out", default=None, help="where to write the chosen config (default "
                                                         "OUT/chosen_config.json)")
    chair.add_argument("--resume", action="store_true", help="continue the tuning run in --out (same flags)")
    chair.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default 8)")
    chair.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default 512)")
    chair.add_argument("--seed", type=int, default=0, help="torch seed of every run (default 0)")
    chair.add_argument("--prompt", default=None, help="override the captioning prompt")
    chair.add_argument("--no-progress", action="store_true", help="hide progress bars")
    chair.set_defaults(func=cmd_tune)

