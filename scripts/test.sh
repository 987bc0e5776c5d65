#!/usr/bin/env bash
# The test command of the README: sets up .venv with the test extras, then runs the whole suite, one worker per
# core (each test file stays in one worker, so its module fixtures and compiled functions are shared).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,train
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
