#!/usr/bin/env bash
# Install cloakd into ./.venv on a fresh machine. Pulls no CUDA package: torch is pinned to the local CPU
# wheel (2.13.0+cpu) before anything else can ask for it, and facenet-pytorch (MTCNN weights only) is
# installed without its dependencies, which pin an old torch and torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" --no-deps "facenet-pytorch==2.6.0"
if [ "${1:-}" = "--test" ]; then
    "${PIP[@]}" -e ".[test]"
else
    "${PIP[@]}" -e .
fi
if .venv/bin/python -m pip list 2>/dev/null | grep -qi nvidia; then
    echo "install.sh: a CUDA (nvidia) package was pulled in; refusing to continue" >&2
    exit 1
fi
