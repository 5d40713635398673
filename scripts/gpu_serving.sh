#!/usr/bin/env bash
# One prepared GPU run for the serving figures (python -m bench gpu-serving, and the CUDA
# provider checked against the CPU one by python -m bench cuda-check), written under $OUT.
# The device machine has PyTorch but no package registry: on this machine first
#     bash scripts/gpu_carry.sh          (.carry/: the service's wheels, onnxruntime-gpu in parts)
# then carry .carry (one ort part per call if need be) and run this script there. It unpacks
# what was carried into .carry/site and puts it on PYTHONPATH.
# Rehearse on a CPU: PROVIDERS=cpu CLIENTS="1 8" ROUNDS=1 OUT=/tmp/out bash scripts/gpu_serving.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu/out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-serving-log.txt") 2>&1
if compgen -G ".carry/ort.tar.xz.*" > /dev/null; then
  rm -rf .carry/site && mkdir -p .carry/site
  cat .carry/ort.tar.xz.* | tar -xJ -C .carry/site
  $PY -m pip install -q --no-index --no-deps --target .carry/site .carry/wheels/*.whl
  export PYTHONPATH="$PWD/.carry/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"
# shellcheck disable=SC2086  # the lists split into arguments
if [[ " ${PROVIDERS:-cuda cpu} " == *" cuda "* ]]; then
  $PY -m bench cuda-check --json "$OUT/ort-cuda.json" || echo "cuda-check failed: see above"
fi
# shellcheck disable=SC2086
$PY -m bench gpu-serving --providers ${PROVIDERS:-cuda cpu} --clients ${CLIENTS:-1 8 32 128} \
  --rounds "${ROUNDS:-2}" --json "$OUT/gpu-serving.json"
ls -la "$OUT"
