#!/usr/bin/env bash
# Serve the shipped models on a fresh machine: set up .venv (service only: no torch) if needed,
# then run `python -m service` with any flags given (see `python -m service --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/machado-serve ] || bash scripts/setup.sh gpu
exec .venv/bin/python -m service "$@"
