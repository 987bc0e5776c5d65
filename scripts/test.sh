#!/usr/bin/env bash
# The test command of the README: sets up .venv with the test extras, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,train
exec .venv/bin/python -m pytest -q "$@"
