"""Write lmms-eval tasks over the toy POPE questions (`toy_pope_<split>`), for `lmms-eval --include_path OUT`.

    python scripts/lmms_eval_toy_pope.py --data toy_runs/toy_coco --out toy_runs/lmms_tasks
    lmms-eval --model vlm_attn --model_args pretrained=toy-vlm,methods=pai --include_path toy_runs/lmms_tasks \
        --tasks toy_pope_random,toy_pope_popular,toy_pope_adversarial --batch_size 16 --output_path toy_runs/lmms

Each task reads one question file of DATA/pope (as `vlm-attn eval pope --pope-dir DATA/pope` does), asks the bare
question (the toy benchmark's `--prompt "{question}"`), generates 4 tokens and scores POPE's official yes/no rule.
The YAML template and its hooks live in tests/lmms_eval_task/ (the plugin's tests use the same files).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "tests" / "lmms_eval_task"
SPLITS = ("random", "popular", "adversarial")


def write_tasks(data: Path, out: Path, splits=SPLITS, limit: int | None = None) -> list[str]:
    """One task folder entry per split under `out`; returns the task names."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEMPLATE / "toy_pope_utils.py", out)
    names = []
    for split in splits:
        rows = [json.loads(line) for line in (data / "pope" / f"coco_pope_{split}.jsonl").read_text().splitlines()]
        rows = rows[:limit] if limit else rows
        file = out / f"toy_pope_{split}.jsonl"
        file.write_text("".join(json.dumps({
            "question_id": r["question_id"], "image_path": str((data / "val2014" / r["image"]).resolve()),
            "question": r["text"], "answer": r["label"]}) + "\n" for r in rows))
        name = f"toy_pope_{split}"
        text = (TEMPLATE / "toy_pope.yaml.in").read_text().replace("{data_file}", str(file.resolve()))
        (out / f"{name}.yaml").write_text(text.replace("task: toy_pope\n", f"task: {name}\n"))
        names.append(name)
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="toy COCO root (scripts/make_toy_coco.py --out)")
    p.add_argument("--out", required=True, type=Path, help="task folder to write (pass it to --include_path)")
    p.add_argument("--splits", default=",".join(SPLITS), help="comma-separated POPE splits (default all three)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each split (default all)")
    args = p.parse_args(argv)
    names = write_tasks(args.data, args.out, [s for s in args.splits.split(",") if s], args.limit)
    print(",".join(names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
