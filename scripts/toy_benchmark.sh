#!/usr/bin/env bash
# Reproduces the README's toy-benchmark table: every method on toy CHAIR and toy POPE with the shipped toy model.
#   bash scripts/toy_benchmark.sh [OUT_DIR]      (about 15-30 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-toy_runs}
DATA="$OUT/toy_coco"
[ -d "$DATA/val2014" ] || python scripts/make_toy_coco.py --out "$DATA" --train 6000 --val 300 --seed 0
SINKS="$OUT/toy_sinks.json"
[ -f "$SINKS" ] || vlm-attn calibrate-sinks --model toy-vlm --threshold "${TOY_SINK_THRESHOLD:-6}" --out "$SINKS"
HEADS="$OUT/toy_heads.json"
[ -f "$HEADS" ] || vlm-attn calibrate-heads --model toy-vlm --images "$DATA/val2014" --n 32 --out "$HEADS"
echo "{\"var\": {\"sink_dims\": \"$SINKS\", \"tau\": ${TOY_SINK_THRESHOLD:-6}}}" > "$OUT/var.json"
echo "{\"paint\": {\"head_sensitivity\": \"$HEADS\"}}" > "$OUT/heads.json"
run() {  # name, then method flags
  local name=$1; shift
  for task in chair pope; do
    extra=()
    # The toy model was trained on the bare question (its vocabulary has no words for POPE's answer instruction).
    [ "$task" = pope ] && extra=(--pope-dir "$DATA/pope" --max-new-tokens 4 --prompt "{question}")
    [ "$task" = chair ] && extra=(--num-images 300 --max-new-tokens 48)
    [ -f "$OUT/$task-$name/metrics.json" ] || vlm-attn eval "$task" --model toy-vlm --coco-root "$DATA" \
        --out "$OUT/$task-$name" --batch-size 16 --no-progress "${extra[@]}" "$@" \
        $( [ -d "$OUT/$task-$name" ] && echo --resume )
  done
}
run vanilla
run var --method var --method-config "$OUT/var.json"
run pai --method pai
run paint --method paint
run paint-heads --method paint --method-config "$OUT/heads.json"
run funnel --method funnel
vlm-attn report "$OUT"/chair-* --csv "$OUT/chair.csv"
vlm-attn report "$OUT"/pope-* --csv "$OUT/pope.csv"
