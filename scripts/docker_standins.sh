#!/usr/bin/env bash
# Local stand-ins for the base images the Dockerfiles name, built from Debian's packages, for a
# Docker engine that cannot reach a container registry (the test machines): the tests build the
# real Dockerfiles with `--build-arg` pointing at these. They are NOT the images the README's
# commands use (python:3.11-slim-bookworm, nginx), and are named so:
#   machado-standin/python:bookworm   Debian bookworm, minbase, Python 3.11 with venv and pip
#   machado-standin/nginx:bookworm    the same, with Debian's nginx (1.22)
#   machado-standin/postgres:bookworm the same, with Debian's PostgreSQL 15 and an entrypoint
#                                     that, as the postgres image's, makes POSTGRES_USER's
#                                     database POSTGRES_DB on first start
# Idempotent and cached: an image that exists is kept (STANDIN_REBUILD=1 builds them again).
# Where the host names a CA bundle for pip (its TLS to the package index may be intercepted),
# the stand-ins carry that bundle, so that pip in a build container trusts what the host trusts.
# Needs root, debootstrap and a running Docker engine.
set -euo pipefail

SUITE=bookworm
MIRROR=${STANDIN_MIRROR:-$(awk '/^deb / && /debian/ {print $2; exit}' /etc/apt/sources.list \
  /etc/apt/sources.list.d/*.list 2>/dev/null || true)}
if [ -z "$MIRROR" ]; then  # deb822 sources (debian.sources)
  MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=${STANDIN_WORK:-/var/tmp/machado-standins}

exists() { [ -z "${STANDIN_REBUILD:-}" ] && docker image inspect "$1" >/dev/null 2>&1; }

# The CA bundle pip is told to use on this host, if any.
ca_bundle() {
  local cert
  cert=$(pip config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'$/\1/p" | head -1)
  cert=${cert:-${PIP_CERT:-}}
  [ -n "$cert" ] && [ -f "$cert" ] && echo "$cert"
}

# A minbase root file system with the given packages, as an image named $1 whose command is $2.
build() {
  local name=$1 command=$2
  shift 2
  if exists "$name"; then
    echo "$name: exists"
    return
  fi
  local root="$WORK/${name//[\/:]/_}"
  rm -rf "$root"
  mkdir -p "$root"
  echo "$name: debootstrap $SUITE from $MIRROR ..."
  debootstrap --variant=minbase --include="$(IFS=,; echo "$*")" "$SUITE" "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
  local cert
  if cert=$(ca_bundle); then
    # Debian's own bundle, replaced by the host's (which includes the public roots too).
    cp "$cert" "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  # What a slim image leaves out: apt's lists and caches, man pages and docs.
  if [ -n "${SETUP:-}" ]; then "$SETUP" "$root"; fi
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" -c . | docker import \
    --change "ENV PATH=${STANDIN_PATH:-}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENV LANG=C.UTF-8' \
    ${ENTRYPOINT:+--change "ENTRYPOINT $ENTRYPOINT"} \
    --change "CMD $command" - "$name" >/dev/null
  rm -rf "$root"
  echo "$name: built ($(docker image inspect -f '{{.Size}}' "$name") bytes)"
}

build machado-standin/python:bookworm '["python3"]' python3 python3-venv python3-pip \
  python-is-python3 ca-certificates
# As the nginx image runs it: in the foreground, with /etc/nginx/conf.d/*.conf included.
build machado-standin/nginx:bookworm '["nginx", "-g", "daemon off;"]' nginx-light ca-certificates

# The postgres image's contract, as far as docker-compose.yml uses it: POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB make a role and its database in an empty data directory on
# the first start; the server then listens on every address, passwords required.
postgres_setup() {
  cat >"$1/usr/local/bin/docker-entrypoint.sh" <<'ENTRY'
#!/bin/sh
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "$POSTGRES_PASSWORD" >/tmp/pwfile
  chown postgres /tmp/pwfile
  runuser -u postgres -- initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm /tmp/pwfile
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  runuser -u postgres -- pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "${POSTGRES_DB:-$POSTGRES_USER}" != "$POSTGRES_USER" ]; then
    runuser -u postgres -- psql -U "$POSTGRES_USER" -d postgres \
      -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" >/dev/null
  else
    runuser -u postgres -- psql -U "$POSTGRES_USER" -d postgres \
      -c "CREATE DATABASE \"$POSTGRES_USER\"" >/dev/null
  fi
  runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
[ "${1:-}" = postgres ] && exec runuser -u postgres -- postgres -D "$PGDATA"
exec "$@"
ENTRY
  chmod 755 "$1/usr/local/bin/docker-entrypoint.sh"
}
SETUP=postgres_setup STANDIN_PATH=/usr/lib/postgresql/15/bin: \
  ENTRYPOINT='["/usr/local/bin/docker-entrypoint.sh"]' \
  build machado-standin/postgres:bookworm '["postgres"]' postgresql-15 ca-certificates
