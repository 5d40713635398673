#!/usr/bin/env bash
# The test suite from a fresh clone: set-up, lint, then pytest. Tests that need the real corpus
# read it from MACHADO_CORPUS (default ../shared/corpus/machado) and skip where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || bash scripts/setup.sh gpu,train,dev
.venv/bin/ruff check training service tests scripts
.venv/bin/ruff format --check training service tests scripts
exec .venv/bin/pytest "$@"
