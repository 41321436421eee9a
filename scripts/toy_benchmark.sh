#!/usr/bin/env bash
# Reproduces the README's toy-benchmark table: every method on toy CHAIR and toy POPE with the shipped toy model.
#
#   bash scripts/toy_benchmark.sh [--quick] [OUT_DIR]
#   TOY_ONLY="opera" bash scripts/toy_benchmark.sh toy_runs   # only the named rows (space-separated), then report
#
# Full: 300 CHAIR images and the 966 questions of each POPE split (3 x 966), thirteen rows; see the README for the
# measured time on 2 CPU cores. --quick: 60 CHAIR images and the first 120 questions of each POPE split (a smoke
# run of the whole pipeline, numbers NOT comparable with the full table), written to OUT_DIR-quick by default.
# Every step is resumable: run the same command again after an interruption and finished runs are kept.
# Each finished eval prints its wall time; the total is printed at the end.
set -euo pipefail
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
OUT=${1:-toy_runs}
if [ "$QUICK" = 1 ] && [ -z "${1:-}" ]; then OUT=toy_runs-quick; fi
DATA="${TOY_DATA:-$OUT/toy_coco}"
mkdir -p "$OUT"
TAU="${TOY_SINK_THRESHOLD:-4}"
START=$SECONDS
[ -d "$DATA/val2014" ] || python scripts/make_toy_coco.py --out "$DATA" --train 6000 --val 300 --seed 0
wanted() { [ -z "${TOY_ONLY:-}" ] || [[ " $TOY_ONLY " == *" $1 "* ]]; }
SINKS="$OUT/toy_sinks.json"
if wanted var; then
  [ -f "$SINKS" ] || vlm-attn calibrate-sinks --model toy-vlm --threshold "$TAU" --out "$SINKS"
fi
HEADS="$OUT/toy_heads.json"
if wanted paint-heads; then
  [ -f "$HEADS" ] || vlm-attn calibrate-heads --model toy-vlm --images "$DATA/val2014" --n 32 --out "$HEADS"
fi
echo "{\"var\": {\"sink_dims\": \"$SINKS\", \"tau\": $TAU}}" > "$OUT/var.json"
echo "{\"paint\": {\"head_sensitivity\": \"$HEADS\"}}" > "$OUT/heads.json"
if [ "$QUICK" = 1 ]; then CHAIR_N=60; POPE_LIMIT=(--limit 120); else CHAIR_N=300; POPE_LIMIT=(); fi
run() {  # name, then method flags
  local name=$1; shift
  wanted "$name" || return 0
  for task in chair pope; do
    extra=()
    # The toy model was trained on the bare question (its vocabulary has no words for POPE's answer instruction).
    [ "$task" = pope ] && extra=(--pope-dir "$DATA/pope" --max-new-tokens 4 --prompt "{question}" "${POPE_LIMIT[@]}")
    [ "$task" = chair ] && extra=(--num-images "$CHAIR_N" --max-new-tokens 48)
    if [ ! -f "$OUT/$task-$name/metrics.json" ]; then
      local t0=$SECONDS
      vlm-attn eval "$task" --model toy-vlm --coco-root "$DATA" \
        --out "$OUT/$task-$name" --batch-size 16 --no-progress "${extra[@]}" "$@" \
        $( [ -d "$OUT/$task-$name" ] && echo --resume )
      echo "toy_benchmark: $task-$name took $((SECONDS - t0)) s" >&2
    fi
  done
}
run vanilla
run var --method var --method-config "$OUT/var.json"
run pai --method pai
run paint --method paint
run paint-heads --method paint --method-config "$OUT/heads.json"
run funnel --method funnel
run opera --method opera  # official defaults: 5 beams, 5 candidates, rollback on
run vcd --method vcd      # the baselines with their defaults, greedy (as every row here)
run icd --method icd
run m3id --method m3id
run dola --method dola
run vista --method vista
run only --method only
vlm-attn report "$OUT"/chair-* --csv "$OUT/chair.csv"
vlm-attn report "$OUT"/pope-* --csv "$OUT/pope.csv"
echo "toy_benchmark: total $((SECONDS - START)) s" >&2
