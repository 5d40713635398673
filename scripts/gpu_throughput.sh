#!/usr/bin/env bash
# Training throughput of the base preset on a GPU, eager against torch.compile modes and batch
# sizes, with profiler tables for the first two (issue 4). Writes $OUT/throughput-*.json.
set -uo pipefail
OUT=${OUT:-gpu/out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
run() {  # label args...
  local label=$1; shift
  timeout 150 $PY -m training bench-train --preset base "$@" --json "$OUT/throughput-$label.json" \
    >> "$OUT/throughput-log.txt" 2>&1 || echo "$label failed: $?"
  grep -E '"(tokens_per_s|ms_per_step|warmup_seconds)"' "$OUT/throughput-$label.json" | tr -d '\n'
  echo "  <- $label"
}
run eager-b64 --batch-size 64 --profile
run compiled-b64 --batch-size 64 --compile --profile
run cudagraphs-b64 --batch-size 64 --compile reduce-overhead
run compiled-b128 --batch-size 128 --compile
