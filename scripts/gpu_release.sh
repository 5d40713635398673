#!/usr/bin/env bash
# One prepared GPU run that leaves behind what models/ needs (issue 4):
#   1. the notebook's attention benchmark and the base preset's training throughput;
#   2. two variants of each shipped model trained side by side on one GPU, under a time budget
#      (the attention model's second variant starts a quarter of its windows at a text's start);
#   3. the variant with the lower validation loss kept, evaluated on validation and test
#      (fp32 weights and fp16-rounded weights, to price fp16 storage); both attention variants
#      kept, for ship_release.sh to choose between them by how they also start a text;
#   4. everything packed into a few parts under $OUT (scripts/release_pack.py).
# Rehearse on CPU first: TINY=1 OUT=/tmp/out bash scripts/gpu_release.sh
# Expects prepared data in data/ (python -m training prepare).
set -euo pipefail
OUT=${OUT:-gpu/out}
RUNS=${RUNS:-gpu/runs}
PY=${PYTHON:-python3}
TINY=${TINY:-0}
mkdir -p "$OUT" "$RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export MACHADO_GIT_COMMIT=${MACHADO_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

if [ "$TINY" = 1 ]; then
  BIG=tiny; BENGIO=tiny; SEED=tiny; T_BIG=40; T_SMALL=15; COMPILE=""; STEPS=30
  BATCH=8; BENGIO_BATCH=4; SEED_BATCH=8; EVAL=100; LOOPS=(--batch 4 --steps 8)
else
  BIG=base; BENGIO=base; SEED=seed; T_BIG=${T_BIG:-300}; T_SMALL=${T_SMALL:-140}
  COMPILE=--compile; STEPS=300; BATCH=64; BENGIO_BATCH=16; SEED_BATCH=256; EVAL=750; LOOPS=()
fi
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started ))s] $*"; }

stamp "hardware"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp "attention benchmark"
$PY -m bench attention --loop-repeats 1 "${LOOPS[@]}" --json "$OUT/bench_attention.json"

stamp "throughput of the $BIG preset"
common=(--data data --no-progress --log-interval 50 --eval-interval 100000 --eval-windows 8)
$PY -m training train --model attention --preset "$BIG" --batch-size "$BATCH" --max-steps "$STEPS" \
  $COMPILE --out "$RUNS/throughput-compiled" "${common[@]}" > "$RUNS/throughput-compiled.log" 2>&1
$PY -m training train --model attention --preset "$BIG" --batch-size "$BATCH" \
  --max-steps $((STEPS / 3)) --out "$RUNS/throughput-eager" "${common[@]}" \
  > "$RUNS/throughput-eager.log" 2>&1
$PY - "$RUNS" "$OUT/throughput.json" <<'EOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
result = {name: json.loads((runs / f"throughput-{name}" / "summary.json").read_text())
          for name in ("compiled", "eager")}
Path(sys.argv[2]).write_text(json.dumps(result, indent=2) + "\n")
print({k: v["train_tokens_per_s"] for k, v in result.items()})
EOF
rm -rf "$RUNS"/throughput-*/{best,last}

train() {  # name kind preset seconds batch extra...
  local name=$1 kind=$2 preset=$3 seconds=$4 batch=$5; shift 5
  timeout $((seconds + 120)) $PY -m training train --model "$kind" --preset "$preset" \
    --batch-size "$batch" --max-steps 10000000 --time-budget "$seconds" --warmup-steps 200 \
    --eval-interval "$EVAL" --log-interval 50 --no-progress $COMPILE --data data \
    --out "$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1 || echo "$name failed: $?"
}

stamp "training four processes side by side"
pids=()
# The attention model twice: as before, and with a quarter of each batch's windows starting a
# text as the service reads a prompt (issue 39); ship_release.sh chooses between them here.
train attention-d30 attention "$BIG" "$T_BIG" "$BATCH" --set dropout=0.3 & pids+=($!)
train attention-d30-starts attention "$BIG" "$T_BIG" "$BATCH" --set dropout=0.3 \
  --text-starts 0.25 & pids+=($!)
( train bengio-d10 bengio "$BENGIO" "$T_SMALL" "$BENGIO_BATCH" --set dropout=0.1
  train seed-d10 attention "$SEED" "$T_SMALL" "$SEED_BATCH" --set dropout=0.1 ) & pids+=($!)
( train bengio-d25 bengio "$BENGIO" "$T_SMALL" "$BENGIO_BATCH" --set dropout=0.25
  train seed-d00 attention "$SEED" "$T_SMALL" "$SEED_BATCH" --set dropout=0.0 ) & pids+=($!)
wait "${pids[@]}"  # not a bare wait: that would also wait for the tee behind the log
stamp "training done"

$PY - "$RUNS" <<'EOF'
import json, shutil, sys
from pathlib import Path
from training.evaluate import evaluate_checkpoint
runs = Path(sys.argv[1])
groups = {"attention": ["attention-d30", "attention-d30-starts"],
          "bengio": ["bengio-d10", "bengio-d25"], "attention-seed": ["seed-d10", "seed-d00"]}
chosen = {}
for shipped, names in groups.items():
    scores = {n: json.loads((runs / n / "summary.json").read_text())["best_val_loss"]
              for n in names if (runs / n / "summary.json").is_file()}
    print(shipped, "validation loss by variant:", scores)
    best = min(scores, key=scores.get)
    chosen[shipped] = best
    # The attention variants all travel: the choice between them also reads how they start
    # a text (ship_release.sh), which needs the corpus's validation texts, kept off the GPU.
    kept = sorted(scores) if shipped == "attention" else [best]
    if shipped == "attention":
        chosen["attention_candidates"] = {n: scores[n] for n in kept}
    for name in names:
        if name not in kept:
            shutil.rmtree(runs / name / "best", ignore_errors=True)
    for name in kept:
        for split, storage in (("validation", "float32"), ("test", "float32"), ("test", "float16")):
            result = evaluate_checkpoint(runs / name / "best", Path("data"), split, 32, None, storage)
            out = runs / name / f"eval-{split}-{storage}.json"
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(shipped, name, split, storage, f"BPC {result['bits_per_character']:.4f}",
                  f"PPL {result['perplexity']:.2f}")
(runs / "release").mkdir(exist_ok=True)
(runs / "release" / "chosen.json").write_text(json.dumps(chosen, indent=2) + "\n")
EOF
rm -rf "$RUNS"/*/last
cp "$RUNS"/*.log "$OUT/throughput.json" "$OUT/bench_attention.json" "$RUNS/release/"
stamp "packing"
$PY scripts/release_pack.py pack "$RUNS"/attention-d30* "$RUNS"/bengio-* "$RUNS"/seed-* \
  "$RUNS/release" --out "$OUT" --chunk-mib 15.9
stamp "done"
ls -la "$OUT"
