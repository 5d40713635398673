#!/usr/bin/env bash
# Set-up on a fresh machine with Python 3.11+ and pip: a virtual environment in .venv with the
# project and its pinned dependencies (torch's CPU build where the machine provides it).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-gpu,train,dev}
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
