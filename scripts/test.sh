#!/usr/bin/env bash
# Everything the tests need on a fresh machine, then the whole suite (slow end-to-end tests included).
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
exec .venv/bin/python -m pytest "$@"
