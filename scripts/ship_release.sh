#!/usr/bin/env bash
# Turn an unpacked GPU release (scripts/gpu_release.sh, then release_pack.py unpack) into models/:
# export the chosen variant of each model with its evaluations, then regenerate the report.
# The attention model's variants are chosen here: each is exported beside the new seed model
# into RELEASE_DIR/staging, `python -m training starts --split validation` measures how each
# reads a text's start (it needs the corpus), and the lowest validation loss among those no
# worse than the seed model at a text's tokens 1 and 2-4 ships (training.starts.choose_variant;
# the reason goes in RELEASE_DIR/release/attention-choice.txt).
# Usage: bash scripts/ship_release.sh RELEASE_DIR      (STUDIES=0: skip the context, heads and
# report runs, e.g. to rehearse the choice)
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:?usage: ship_release.sh RELEASE_DIR}
py=${PYTHON:-.venv/bin/python}
chosen_json="$release/release/chosen.json"
note="Trained by scripts/gpu_release.sh: one NVIDIA H100 shared by four training processes (two variants of each model side by side), the variant with the lower validation loss kept (the attention model's: also no worse than the seed model at a text's first tokens); evaluated there in fp32, and with fp16-rounded weights."
chosen() { $py -c "import json; print(json.load(open('$chosen_json'))['$1'])"; }
export_run() {  # run folder
  $py -m training export "$release/$1/best" --out "$2" --note "$note" \
    --eval "$release/$1/eval-validation-float32.json" \
    --eval "$release/$1/eval-test-float32.json" \
    --eval "$release/$1/eval-test-float16.json"
}
attention=$(chosen attention)
candidates=$($py -c "import json; print(' '.join(json.load(open('$chosen_json')).get('attention_candidates', {})))")
if [ -n "$candidates" ]; then
  staging="$release/staging"
  rm -rf "$staging" && mkdir -p "$staging"
  cp models/tokenizer.json "$staging/"
  export_run "$(chosen attention-seed)" "$staging/attention-seed"
  for run in $candidates; do export_run "$run" "$staging/$run"; done
  $py -m training starts --models "$staging" --split validation \
    --json "$release/release/starts-validation.json"
  attention=$($py - "$release/release" <<'PYTHON'
import json, sys
from pathlib import Path
from training.starts import choose_variant
release = Path(sys.argv[1])
losses = json.loads((release / "chosen.json").read_text())["attention_candidates"]
result = json.loads((release / "starts-validation.json").read_text())
pick, why = choose_variant(result, losses, "attention-seed")
(release / "attention-choice.txt").write_text(why + "\n")
print(why, file=sys.stderr)
print(pick)
PYTHON
)
fi
for shipped in attention attention-seed bengio; do
  run=$([ "$shipped" = attention ] && echo "$attention" || chosen "$shipped")
  rm -rf "models/$shipped"
  export_run "$run" "models/$shipped"
done
[ "${STUDIES:-1}" = 0 ] && exit 0
# The context curves of the new models (about 4 minutes on 2 CPU threads; needs the prepared data).
$py -m training context --json benchmarks/context-test.json ||
  echo "the context curves were not measured again: the report calls them stale"
$py -m training heads --json benchmarks/heads-test.json ||
  echo "the attention heads were not measured again: the report calls them stale"
$py -m training starts --json benchmarks/starts-test.json ||
  echo "the starts were not measured again"
$py -m training report
