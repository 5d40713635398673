#!/usr/bin/env bash
# The training pipeline's smoke run on the real corpus: prepare the data, train the tiny preset of
# each model for a few hundred steps on the CPU, evaluate both on the test split.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh gpu,train,dev
py=.venv/bin/python
for kind in attention bengio; do
  $py -m training train --model "$kind" --preset tiny --max-steps 300 --batch-size 16 \
    --lr 2e-3 --warmup-steps 30 --eval-interval 150 --out "runs/smoke-$kind"
  $py -m training evaluate "runs/smoke-$kind/best" --split test --json "runs/smoke-$kind/test.json"
done
