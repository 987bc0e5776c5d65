#!/usr/bin/env bash
# The server's browser page in headless Chromium (scripts/browser_test.py): a fake microphone plays a test
# utterance, the page streams it to `python -m train serve`, and its final text must be the utterance's words.
# Needs a trained run (default runs/main: `bash scripts/main.sh` trains it in about 10 minutes) and Debian's
# chromium, installed here with apt-get when missing. Extra arguments go to the script (--workdir, --utterance).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  echo "browser test: installing Debian's chromium (apt-get)..." >&2
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >&2; then
    echo "browser test: cannot install chromium with apt-get (not root, or no package index reachable);" \
         "install Debian's chromium and run this again" >&2
    exit 2
  fi
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh train,serve
exec .venv/bin/python scripts/browser_test.py --chromium "$(command -v chromium)" "$@"
