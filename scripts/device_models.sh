#!/usr/bin/env bash
# models/ (about 70 MB) is over what one device call may carry with the working tree (64 MiB),
# so for device calls it leaves git's index and travels in parts through `carry` instead.
#   bash scripts/device_models.sh out   before the calls: models/ untracked and ignored here
#   bash scripts/device_models.sh in    after them: tracked again (commit nothing in between)
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=.git/info/exclude
case "${1:-}" in
  out)
    git rm -r -q --cached models
    grep -qx '/models/' "$exclude" || echo '/models/' >> "$exclude"
    ;;
  in)
    sed -i '\#^/models/$#d' "$exclude"
    git add models
    ;;
  *)
    echo "usage: device_models.sh out|in" >&2
    exit 2
    ;;
esac
git status --short models | head -5
