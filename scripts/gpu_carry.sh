#!/usr/bin/env bash
# Prepares, on this machine, what a GPU session carries to the device machine to serve there
# (the service on CUDA, python -m bench cuda-check). The GPU image has PyTorch, numpy, tokenizers, httpx and
# prometheus-client, but neither onnxruntime-gpu nor FastAPI, and nothing can be fetched there.
#   .carry/wheels/           the service's dependencies the image lacks (a few MiB)
#   .carry/ort.tar.xz.NN     onnxruntime-gpu, unpacked, xz-compressed and split into parts small
#                            enough to travel one per call (a call carries at most 64 MiB)
# Versions are the ones installed in this project's virtual environment, i.e. the pins.
#     bash scripts/gpu_carry.sh [PART_MIB]      (default 56)
# PYVER (3.12, the GPU image's Python) and DEST (.carry) change the target, e.g. to rehearse
# the unpacking here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PART_MIB=${1:-56}
dest=${DEST:-.carry}
rm -rf "$dest" && mkdir -p "$dest/wheels"
platform=(--only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
# The service's dependencies and theirs, as installed here (numpy and tokenizers are there).
closure=$($PY - <<'PYTHON'
import importlib.metadata as metadata
from packaging.requirements import Requirement
seen, todo = set(), ["fastapi", "fastapi-offline", "uvicorn", "pydantic-settings",
                     "prometheus-client", "sse-starlette"]
while todo:
    name = todo.pop()
    key = name.lower().replace("_", "-")
    if key in seen:
        continue
    seen.add(key)
    for line in metadata.requires(name) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
print(" ".join(f"{n}=={metadata.version(n)}" for n in sorted(seen)))
PYTHON
)
# shellcheck disable=SC2086  # one argument per requirement
$PY -m pip download -q --no-deps "${platform[@]}" -d "$dest/wheels" $closure
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PY -m pip download -q --no-deps "${platform[@]}" -d "$tmp" \
  "onnxruntime-gpu==$(version onnxruntime-gpu)"
mkdir "$tmp/site"
(cd "$tmp/site" && unzip -q "$tmp"/onnxruntime_gpu-*.whl)
rm -f "$tmp"/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so  # TensorRT: not used
tar -C "$tmp/site" -cf - . | xz -T0 -6 | split -b "${PART_MIB}m" -d - "$dest/ort.tar.xz."
ls -la "$dest" "$dest/wheels"
echo "carry one ort part per call; on the device: cat ort.tar.xz.* | tar -xJ"
