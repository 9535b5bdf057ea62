#!/usr/bin/env bash
# Everything the tests need on a fresh machine, the gate (lint, format, complexity), then the whole suite
# (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
if ! command -v exiftool >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq libimage-exiftool-perl) >/dev/null
fi
# The service tests: systemd-analyze checks the unit; a second unix account proves per-user rights.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq systemd) >/dev/null
fi
if [ "$(id -u)" = 0 ] && ! id cloakd-test-b >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin cloakd-test-b
fi
# The gate, before any test: lint (pyflakes, pycodestyle, import order), formatting, and no function in core/ or
# daemon/ above cyclomatic complexity 15 (ruff and radon, pinned in the test extra; settings in pyproject.toml).
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/python scripts/complexity.py core daemon
exec .venv/bin/python -m pytest "$@"
