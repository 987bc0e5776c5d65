#!/usr/bin/env bash
# Creates .venv (if missing) and installs streamformer with the given extras, e.g. `scripts/setup.sh test,train`.
# torch is pinned to 2.13.0 in pyproject.toml: these machines install its CPU build from a local wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
