#!/usr/bin/env bash
# The test command: lint, then the whole suite (unit tests and the real-ComfyUI-server tests).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SONIC_GUARD_VENV:-$repo/.venv}"
cd "$repo"
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest "$@"
