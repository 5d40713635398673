#!/usr/bin/env bash
# The test suite from a fresh clone: set-up, lint, then pytest. Tests that need the real corpus
# read it from MACHADO_CORPUS (default ../shared/corpus/machado) and skip where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh gpu,train,dev  # idempotent: a no-op when everything is installed
# What the tests drive for real, installed and started here where we may (root with apt);
# elsewhere those tests skip, saying why: Debian's Chromium for the playground (Playwright
# downloads no browser), a Docker engine with docker-compose and debootstrap for the images and
# the compose file (tests/docker), and PostgreSQL for the A/B record shared by replicas (the
# tests start its cluster).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
  command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
  command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
  command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
  command -v pg_ctlcluster >/dev/null 2>&1 || missing="$missing postgresql"
  if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    (dockerd >/tmp/machado-dockerd.log 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
fi
.venv/bin/ruff check runtime service training bench tests scripts
.venv/bin/ruff format --check runtime service training bench tests scripts
.venv/bin/hadolint docker/Dockerfile docker/Dockerfile.gpu docker/Dockerfile.train
.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
exec .venv/bin/pytest "$@"
