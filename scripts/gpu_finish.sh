#!/usr/bin/env bash
# The GPU work left for issues 3 and 4, in as few device calls as the 64 MiB carry limit allows:
# the Bengio sweep on the validation split (python -m training sweep) trains in the background
# while onnxruntime-gpu travels in parts; then the CUDA provider is checked against the CPU
# provider with the service's own loader and engine, the service is benchmarked on CUDA, and the
# sweep's results are packed into $OUT.
#
# Here first: bash scripts/gpu_carry.sh; python -m training prepare; bash
# scripts/device_models.sh out (models/ is over the 64 MiB a call carries; `... in` afterwards).
# Files carried under models/ are gone from the checkout there by the next call (seen on
# 2026-12-04: the first provider check found no model and passed), so every verb first stashes
# what a call carried (models, tokenizer, ort parts) in $WORK, and the check reads $WORK/models.
# Then, one call right after the other (the machine goes back after 30 s idle):
#   1. carry data models/bengio .carry/wheels          bash scripts/gpu_finish.sh start
#   2. carry models/attention models/attention-seed models/tokenizer.json .carry/ort.tar.xz.03
#                                                       bash scripts/gpu_finish.sh status
#   3. carry .carry/ort.tar.xz.00                       bash scripts/gpu_finish.sh status
#   4. carry .carry/ort.tar.xz.01                       bash scripts/gpu_finish.sh status
#   5. carry .carry/ort.tar.xz.02                       bash scripts/gpu_finish.sh finish
#      (timeout_s about 560: it waits up to SWEEP_WAIT=480 s for the sweep, then checks; the
#      sweep took 5 minutes on an H200, and the check and benchmark under a minute)
# The sweep's models replace models/bengio and models/attention-seed (ship_sweep.py): check the
# shipped graphs again afterwards, carrying them and the ort parts the same way.
# Afterwards: python scripts/ship_sweep.py DEVICE_OUT_FOLDER, then device_models.sh in.
# Rehearse on CPU: TINY=1 OUT=/tmp/out WORK=/tmp/work bash scripts/gpu_finish.sh start, then
# ... finish (it then checks CPU against CPU with --allow-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/recipes.sh
source scripts/recipes.sh
OUT=${OUT:-gpu/out}
WORK=${WORK:-/tmp/machado-gpu}
PY=${PYTHON:-python3}
TINY=${TINY:-0}
mkdir -p "$OUT" "$WORK"
export MACHADO_GIT_COMMIT=${MACHADO_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

sweep() {
  local steps=${STEPS:-$BENGIO_STEPS} parallel=${PARALLEL:-7} extra=(--compile) vary preset=base
  local seed=seed seed_steps=$SEED_STEPS
  vary=("${BENGIO_VARY[@]}")
  if [ "$TINY" = 1 ]; then
    steps=20 parallel=2 extra=(--device cpu --eval-windows 8) preset=tiny seed=tiny seed_steps=20
    vary=(--vary context=4 --vary dropout=0.0)
  fi
  # attention-seed is compared with bengio at equal context: should the sweep move bengio's
  # context, the seed model must follow. Train it at the other contexts meanwhile, with the
  # shipped seed's recipe (2,048 tokens a step, dropout 0.1, the same number of steps).
  local seeds=()
  for ctx in 4 12; do
    (
      out="$WORK/seeds/context=$ctx"
      seed_train_args "$ctx" "$seed_steps"
      $PY -m training train --model attention --preset "$seed" "${SEED_ARGS[@]}" --no-progress \
        "${extra[@]}" --data data --out "$out" > "$WORK/seed-context=$ctx.log" 2>&1
      rm -rf "$out/last"
      evaluate_seed "$PY" "$out" data
    ) &
    seeds+=($!)
  done
  # The base trial retrains the shipped configuration under the same conditions (recipes.sh).
  local rc=0
  bengio_train_args "$steps"
  $PY -m training sweep --model bengio --preset "$preset" --parallel "$parallel" "${vary[@]}" \
    --out "$WORK/sweep" --data data -- "${TRAIN_ARGS[@]}" "${extra[@]}" || rc=$?
  wait "${seeds[@]}" || rc=$?
  return $rc
}

# stash: what this call carried, kept in $WORK, where the next calls still find it.
stash() {
  mkdir -p "$WORK/models" "$WORK/ort"
  [ -f models/tokenizer.json ] && cp models/tokenizer.json "$WORK/models/"
  for card in models/*/card.json; do
    [ -f "$card" ] && rm -rf "$WORK/models/$(basename "$(dirname "$card")")" \
      && cp -r "$(dirname "$card")" "$WORK/models/"
  done
  for part in .carry/ort.tar.xz.*; do
    [ -f "$part" ] && cp -u "$part" "$WORK/ort/"  # each part once, not at every call
  done
  true
}

status() {
  echo "sweep log (last lines):"
  tail -n 5 "$WORK/sweep.log" 2>/dev/null || echo "(no sweep log)"
  [ -f "$WORK/sweep.rc" ] && echo "sweep finished with exit code $(cat "$WORK/sweep.rc")"
  # No .carry (a rehearsal, or a machine that restarted) must not end the script (set -e).
  ls .carry 2>/dev/null | tr '\n' ' ' || true
  echo
}

install_runtime() {
  local site parts libs
  site=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  if ls .carry/wheels/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile .carry/wheels/*.whl
  fi
  parts=$(ls "$WORK"/ort/ort.tar.xz.* 2>/dev/null | sort || true)
  if [ -n "$parts" ]; then
    $PY -m pip uninstall -q -y onnxruntime onnxruntime-gpu > /dev/null 2>&1 || true
    # shellcheck disable=SC2086  # the parts, in order
    cat $parts | xz -d | tar -x -C "$site"
  fi
  # CUDA 13 and cuDNN 9 come from PyTorch's pip packages in this image.
  libs=$(find "$site/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | paste -sd: || true)
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  $PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
  # Which CUDA libraries load (it prints the ones that do not): the first thing to read if the
  # CUDA provider falls back to the CPU.
  $PY -c "import onnxruntime as o; o.preload_dlls(); print('preload_dlls done: lines above name any library that failed')" \
    2>&1 | tail -n 8
}

case "${1:-}" in
  start | status | finish) stash ;;
esac
case "${1:-}" in
  start)
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    $PY -c "import onnxruntime as o; print('image onnxruntime', o.__version__,
      o.get_available_providers())" 2>/dev/null || echo "image has no onnxruntime"
    rm -rf "$WORK/sweep" "$WORK/seeds" "$WORK/sweep.rc"
    # setsid: the sweep outlives this call and runs on while the next calls carry the parts.
    setsid nohup bash -c "source scripts/recipes.sh; $(declare -f sweep); PY=$PY TINY=$TINY WORK=$WORK \
      STEPS=${STEPS:-} PARALLEL=${PARALLEL:-}; sweep; \
      echo \$? > $WORK/sweep.rc" > "$WORK/sweep.log" 2>&1 < /dev/null &
    sleep "${START_WAIT:-15}"
    status
    ;;
  status)
    status
    ;;
  finish)
    exec > >(tee -a "$OUT/log.txt") 2>&1
    started=$(date +%s)
    # What gpu_carry.sh packs is for the GPU image's Python (3.12): a rehearsal installing it
    # would fail on another Python, or put the GPU build of onnxruntime into this environment.
    if [ "$TINY" = 1 ]; then
      echo "rehearsal: the carried runtime, if any, is left uninstalled"
    else
      install_runtime
    fi
    allow=()
    [ "$TINY" = 1 ] && allow=(--allow-cpu --runs 30 --warmup 3)
    rc=0
    $PY scripts/ort_cuda_check.py --models-dir "$WORK/models" --json "$OUT/ort-cuda.json" \
      "${allow[@]}" || rc=$?
    echo "ort_cuda_check exit code $rc"
    provider=cuda seconds=5
    [ "$TINY" = 1 ] && provider=cpu seconds=1
    $PY scripts/bench_service.py --model attention --provider "$provider" --seconds "$seconds" \
      --requests 100 --generations 5 --models-dir "$WORK/models" \
      --json "$WORK/service-$provider-attention.json" \
      > "$WORK/bench_service.log" 2>&1 || echo "bench_service failed: $(tail -n 3 "$WORK/bench_service.log")"
    tail -n 8 "$WORK/bench_service.log" || true
    wait_s=${SWEEP_WAIT:-480}
    while [ ! -f "$WORK/sweep.rc" ] && [ $(( $(date +%s) - started )) -lt "$wait_s" ]; do
      sleep 5
    done
    status
    tail -n 20 "$WORK/sweep.log" || true
    mkdir -p "$WORK/sweep/gpu"
    cp "$WORK"/*.log "$WORK"/service-*.json "$OUT/ort-cuda.json" "$WORK/sweep/gpu/" 2>/dev/null || true
    $PY scripts/release_pack.py pack "$WORK/sweep" "$WORK/seeds" --out "$OUT" --chunk-mib 15.9
    ls -la "$OUT"
    ;;
  *)
    echo "usage: gpu_finish.sh start|status|finish" >&2
    exit 2
    ;;
esac
