#!/usr/bin/env bash
# One-time (and idempotent) set-up: uv, the .venv with Tether and its locked dependencies.
# A second run only checks that everything is in place, in a few seconds.
set -euo pipefail
cd "$(dirname "$0")"

if command -v uv >/dev/null 2>&1; then
    UV=(uv)
else
    if ! python3 -m uv --version >/dev/null 2>&1; then
        echo "setup: installing uv from PyPI" >&2
        python3 -m pip install --quiet --disable-pip-version-check uv
    fi
    UV=(python3 -m uv)
fi

echo "setup: syncing .venv from uv.lock" >&2
"${UV[@]}" sync --locked --quiet

echo "setup: done. Start the server with: .venv/bin/tether serve" >&2
