#!/bin/sh
# Install the service (no torch) into a virtual environment: what the images run, and what
# tests/service/test_docker_install.py runs in a fresh environment.
# Usage: install-service.sh VENV_DIR cpu|gpu [PROJECT_DIR]
set -eu
venv_dir=$1
runtime=$2
project=${3:-.}
python3 -m venv "$venv_dir"
"$venv_dir/bin/pip" install --no-cache-dir --disable-pip-version-check --quiet "$project[$runtime]"
