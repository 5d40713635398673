#!/usr/bin/env bash
# Build time and size of each service image, built from scratch (--no-cache) on the local Docker
# engine, written to a JSON file (default benchmarks/docker-images.json). The bases are the
# build arguments' values from the environment, else the stand-ins of scripts/docker_standins.sh
# (no registry here); the base's own size is recorded beside each image's.
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: the build context
out=${1:-benchmarks/docker-images.json}
python_image=${PYTHON_IMAGE:-machado-standin/python:bookworm}
cuda_image=${CUDA_IMAGE:-machado-standin/python:bookworm}
[ -n "${PYTHON_IMAGE:-}${CUDA_IMAGE:-}" ] || bash scripts/docker_standins.sh >/dev/null

size() { docker image inspect -f '{{.Size}}' "$1"; }

measure() {  # name dockerfile arg base
  local started=$SECONDS
  docker build --no-cache -q -f "$2" --build-arg "$3=$4" -t "$1" . >/dev/null
  printf '{"image": "%s", "dockerfile": "%s", "base": "%s", "base_bytes": %s, "bytes": %s, "build_seconds": %s}' \
    "$1" "$2" "$4" "$(size "$4")" "$(size "$1")" "$((SECONDS - started))"
}

cpu=$(measure machado-lm:cpu docker/Dockerfile PYTHON_IMAGE "$python_image")
gpu=$(measure machado-lm:gpu docker/Dockerfile.gpu CUDA_IMAGE "$cuda_image")
printf '{"engine": "%s", "cpu": "%s", "images": [%s, %s], "command": "python -m bench docker %s"}\n' \
  "$(docker version -f '{{.Server.Version}}')" "$(nproc) cores" "$cpu" "$gpu" "$out" \
  | python3 -m json.tool > "$out"
cat "$out"
