#!/usr/bin/env bash
# Turn an unpacked GPU release (scripts/gpu_release.sh, then release_pack.py unpack) into models/:
# export the chosen variant of each model with its evaluations, then regenerate the report.
# Usage: bash scripts/ship_release.sh RELEASE_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:?usage: ship_release.sh RELEASE_DIR}
py=${PYTHON:-.venv/bin/python}
note="Trained by scripts/gpu_release.sh: one NVIDIA H100 shared by four training processes (two variants of each model side by side), the variant with the lower validation loss kept; evaluated there in fp32, and with fp16-rounded weights."
for shipped in attention attention-seed bengio; do
  run=$($py -c "import json,sys; print(json.load(open('$release/release/chosen.json'))['$shipped'])")
  rm -rf "models/$shipped"
  $py -m training export "$release/$run/best" --out "models/$shipped" --note "$note" \
    --eval "$release/$run/eval-validation-float32.json" \
    --eval "$release/$run/eval-test-float32.json" \
    --eval "$release/$run/eval-test-float16.json"
done
# The context curves of the new models (about 4 minutes on 2 CPU threads; needs the prepared data).
$py -m training context --json benchmarks/context-test.json ||
  echo "the context curves were not measured again: the report calls them stale"
$py -m training heads --json benchmarks/heads-test.json ||
  echo "the attention heads were not measured again: the report calls them stale"
$py -m training report
