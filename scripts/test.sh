#!/usr/bin/env bash
# The test suite from a fresh clone: set-up, lint, then pytest. Tests that need the real corpus
# read it from MACHADO_CORPUS (default ../shared/corpus/machado) and skip where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh gpu,train,dev  # idempotent: a no-op when everything is installed
# The playground's browser tests drive Debian's Chromium (Playwright downloads no browser).
# Installed here where we may (root with apt); elsewhere those tests skip, saying why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check training service tests scripts
.venv/bin/ruff format --check training service tests scripts
.venv/bin/hadolint docker/Dockerfile docker/Dockerfile.gpu docker/Dockerfile.train
.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
exec .venv/bin/pytest "$@"
