#!/usr/bin/env bash
# Everything the tests need on a fresh machine, then the whole suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
if ! command -v exiftool >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq libimage-exiftool-perl) >/dev/null
fi
exec .venv/bin/python -m pytest "$@"
