#!/usr/bin/env bash
# Every check and every test, from a fresh clone: set-up (quick when already done), lint, types,
# then the whole pytest suite (unit, service, end-to-end, engines, MCP). Extra arguments go to
# pytest, e.g. `./test.sh -k ws_chat -x`.
set -euo pipefail
cd "$(dirname "$0")"

./setup.sh
echo "test: ruff" >&2
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "test: mypy (strict)" >&2
.venv/bin/mypy
echo "test: pytest" >&2
.venv/bin/pytest "$@"
