#!/usr/bin/env bash
# The main job of the README: sets up .venv, then synthesises the embedded dataset, trains a small Emformer
# RNN-T on this machine's CPU cores, reports test WER, saves a checkpoint and stream-transcribes a test file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train
exec .venv/bin/python -m train main "$@"
