#!/usr/bin/env bash
# The Bengio sweep of issue 3 on a CPU, over as many sittings as it takes (15 h or more on 2 cores;
# the machine must keep OUT from one sitting to the next): the same trials and
# the same step budget as the GPU plan (scripts/gpu_finish.sh), one thread per trial, two trials
# at a time, bf16 autocast. Every sitting goes on where the last one stopped
# (`python -m training sweep --resume`): finished trials are kept, unfinished ones resume from
# their last checkpoint (saved every 200 steps, and at the step under way on SIGTERM: a sitting
# that ends by killing its processes outright costs each trial at most 200 steps, 3 to 6 minutes
# at the 1,200 to 2,300 tokens/s a trial runs on one thread of a 2-core Xeon).
#
#   bash scripts/cpu_sweep.sh start     start or go on, in the background (nothing if it runs)
#   bash scripts/cpu_sweep.sh run       the same in the foreground: the sweep, then the seed model
#                                       at the sweep's context if it moved
#   bash scripts/cpu_sweep.sh status    each trial's step and validation loss, and whether it runs
#   bash scripts/cpu_sweep.sh pause     stop it using the CPU for a while (SIGSTOP) ...
#   bash scripts/cpu_sweep.sh resume    ... and let it go on (SIGCONT)
#   bash scripts/cpu_sweep.sh stop      end it, each trial saving its step (the next start goes
#                                       on from there)
#
# When it is done, OUT/sweep.json holds every trial and the chosen one, evaluated on validation
# and test; then `python scripts/ship_sweep.py --sweep OUT --seeds OUT-seeds` ships it if it beats
# the shipped model on validation. Settings: OUT (runs/sweep-bengio-cpu), PYTHON
# (.venv/bin/python), PARALLEL (2), THREADS (1 per trial), DATA (data), SAVE (200: steps between
# checkpoints), NICE (19: whatever else runs comes first, the sweep takes the idle cores); TINY=1
# rehearses the whole run in a minute (tiny presets, 20 steps). On a CPU without bf16
# instructions it refuses to start (FORCE=1: start anyway; HAS_BF16=0/1 skips the probe).
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."
# shellcheck source=scripts/recipes.sh
source scripts/recipes.sh
OUT=${OUT:-runs/sweep-bengio-cpu}
PY=${PYTHON:-.venv/bin/python}
PARALLEL=${PARALLEL:-2}
THREADS=${THREADS:-1}
DATA=${DATA:-data}
SAVE=${SAVE:-200}
STEPS=$BENGIO_STEPS BENGIO=base SEED=seed EXTRA=()
VARY=("${BENGIO_VARY[@]}")
if [ "${TINY:-0}" = 1 ]; then
  STEPS=20 SEED_STEPS=20 BENGIO=tiny SEED=tiny EXTRA=(--eval-windows 8)
  VARY=(--vary context=2 --vary dropout=0.0)
fi
PID_FILE="$OUT.pid"

running() {
  [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

group_signal() {
  running || { echo "the sweep is not running"; return 0; }
  kill "-$1" -- "-$(cat "$PID_FILE")"
}

sweep() {
  # The trials and train arguments of scripts/gpu_finish.sh's sweep, on the CPU: no
  # torch.compile (on one thread no gain beyond noise: BENCHMARKS.md), explicit bf16.
  bengio_train_args "$STEPS"
  OMP_NUM_THREADS=$THREADS "$PY" -m training sweep --model bengio --preset "$BENGIO" \
    --parallel "$PARALLEL" "${VARY[@]}" --out "$OUT" --data "$DATA" --resume -- \
    "${TRAIN_ARGS[@]}" --device cpu --precision bf16 --save-interval "$SAVE" "${EXTRA[@]}"
}

seeds() {
  # attention-seed is compared with bengio at equal context: where the sweep chose another
  # context, train the seed model there with the shipped seed's recipe (as gpu_finish.sh does).
  local context shipped run
  context=$("$PY" -c 'import json, sys; from pathlib import Path
out = Path(sys.argv[1]); chosen = json.loads((out / "sweep.json").read_text())["chosen"]
print(json.loads((out / chosen / "best" / "config.json").read_text())["config"]["context"])' "$OUT")
  shipped=$("$PY" -c 'import json; print(json.load(open("models/attention-seed/card.json"))["context"])')
  # A rehearsal (TINY=1) trains the seed model whatever the context: it rehearses every step.
  if [ "$context" = "$shipped" ] && [ "${TINY:-0}" != 1 ]; then
    echo "the sweep kept context $context, the seed model's: no seed model to train"
    return 0
  fi
  run="$OUT-seeds/context=$context"
  if [ -f "$run/eval-test-float16.json" ]; then  # evaluate_seed's last file: all three are there
    echo "seed model at context $context: $run (trained and evaluated before)"
    return 0
  fi
  seed_train_args "$context" "$SEED_STEPS"
  OMP_NUM_THREADS=$((THREADS * PARALLEL)) "$PY" -m training train --model attention \
    --preset "$SEED" "${SEED_ARGS[@]}" --no-progress --device cpu --precision bf16 \
    --save-interval "$SAVE" "${EXTRA[@]}" --data "$DATA" --out "$run" --resume
  OMP_NUM_THREADS=$((THREADS * PARALLEL)) evaluate_seed "$PY" "$run" "$DATA"
  echo "seed model at context $context: $run"
}

native_bf16_or_refuse() {
  # The trials train in bf16, as on the GPU; a CPU without bf16 instructions emulates it, far
  # slower than even fp32 (BENCHMARKS.md), and fp32 trials would not match the GPU plan's.
  [ "${TINY:-0}" = 1 ] || [ "${FORCE:-0}" = 1 ] && return 0
  local has=${HAS_BF16:-}
  if [ -z "$has" ]; then
    has=$("$PY" -c 'from training.device import cpu_has_bf16; print(int(cpu_has_bf16()))')
  fi
  if [ "$has" != 1 ]; then
    echo "this CPU has no bf16 instructions (AVX512-BF16 or AMX): the trials train in bf16, as" \
      "on the GPU, and would run emulated, slower than fp32 (BENCHMARKS.md). Run the sweep on a" \
      "CPU that has them or on a GPU (scripts/gpu_finish.sh); FORCE=1 runs it here anyway." >&2
    exit 1
  fi
}

case "${1:-status}" in
  start)
    if running; then
      echo "the sweep runs already (process group $(cat "$PID_FILE")); see: $0 status"
      exit 0
    fi
    native_bf16_or_refuse
    mkdir -p "$OUT"
    MACHADO_GIT_COMMIT=${MACHADO_GIT_COMMIT:-$(git rev-parse HEAD)} \
      setsid nohup nice -n "${NICE:-19}" bash "$SELF" run >> "$OUT.log" 2>&1 < /dev/null &
    echo $! > "$PID_FILE"
    echo "started: process group $!, log $OUT.log"
    ;;
  run)
    native_bf16_or_refuse
    export MACHADO_GIT_COMMIT=${MACHADO_GIT_COMMIT:-$(git rev-parse HEAD)}
    sweep
    seeds
    echo "done: python scripts/ship_sweep.py --sweep $OUT --seeds $OUT-seeds"
    ;;
  status)
    if running; then echo "running (process group $(cat "$PID_FILE"))"; else echo "not running"; fi
    "$PY" - "$OUT" "$STEPS" <<'EOF'
import json, signal, sys
from pathlib import Path

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `status | head` ends quietly
out, steps = Path(sys.argv[1]), int(sys.argv[2])
for trial in sorted(p for p in out.glob("*") if p.is_dir()):
    done = trial / "trial.json"
    if done.is_file():
        result = json.loads(done.read_text())
        print(f"{trial.name:16} done      validation loss {result.get('best_val_loss')}")
        continue
    records = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()
               if line] if (trial / "metrics.jsonl").is_file() else []
    evals = [r for r in records if "val_loss" in r]
    step = records[-1]["step"] if records else 0
    rate = records[-1]["tokens_per_s"] if records else 0
    val = f"validation loss {evals[-1]['val_loss']:.4f} at step {evals[-1]['step']}" if evals else ""
    per_step = records[-1].get("tokens", 0) / step if step else 0
    left = f"{(steps - step) * per_step / rate / 3600:4.1f} h left" if rate and per_step else ""
    saved = trial / "last" / "config.json"
    saved = f"saved at {json.loads(saved.read_text())['step']}" if saved.is_file() else ""
    print(f"{trial.name:16} {step:>6}/{steps} {rate:>7,.0f} tokens/s {left}  {saved:15} {val}")
if (out / "sweep.json").is_file():
    print("finished:", json.loads((out / "sweep.json").read_text())["chosen"], "chosen")
EOF
    ;;
  pause) group_signal STOP ;;
  resume) group_signal CONT ;;
  stop)
    # Each training saves its step under way on SIGTERM; wait for them to have done so.
    if running; then
      group=$(cat "$PID_FILE")
      kill -CONT -- "-$group" 2>/dev/null || true  # a paused sweep cannot save
      kill -TERM -- "-$group"
      for _ in $(seq 120); do
        pgrep -g "$group" > /dev/null || break
        sleep 1
      done
      echo "stopped; the next start goes on from the steps saved now"
    else
      echo "the sweep is not running"
    fi
    rm -f "$PID_FILE"
    ;;
  *)
    echo "usage: $0 start|run|status|pause|resume|stop" >&2
    exit 2
    ;;
esac
