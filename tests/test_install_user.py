"""`scripts/install.sh --user`: the per-user service of a laptop, installed into a scratch home (HOME and the
XDG folders point into a temporary folder; no user systemd answers there, so the script says the command to
start it). The installed user unit passes `systemd-analyze --user verify`, cloakd's own loader accepts the
configuration it wrote (one user, the caller; folders in the home), the installed service runs with it,
a second run keeps the user's configuration, and `--user --uninstall` removes the unit and the environment
(the configuration and state only with `--purge`, the photo folders never).

The environment is really built (torch from the local CPU wheel, cloakd from a clean copy of the checkout),
as in tests/test_install.py: about a minute and a half."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cloakd.daemon.config import load_config
from conftest import DATA, REPO
from servicekit import Service, files, wait_for
from test_install import quiet

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "install.sh"
ME = pwd.getpwuid(os.geteuid()).pw_name


def environment(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment with its home, XDG folders and runtime directory in ``home`` (and no session
    bus: the real user systemd, if any, must not be reached)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "DESTDIR", "SUDO_USER")}
    env.pop("XDG_DATA_HOME", None)  # the default, ~/.local/share
    runtime = home / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "settings"),  # not the default: it must be honoured
        XDG_STATE_HOME=str(home / "var" / "state"),
        XDG_RUNTIME_DIR=str(runtime),
        PYTHON=str(Path(sys.base_prefix) / "bin" / "python3"),
        **extra,
    )
    return env


def unit_word(path: Path) -> str:
    """``path`` as one word of a unit's command line: quoted, backslashes and quotes escaped, % doubled."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def install(home: Path, *options: str, **extra: str) -> subprocess.CompletedProcess[str]:
    run = ["bash", str(SCRIPT), "--user", *options]
    return subprocess.run(run, capture_output=True, text=True, env=environment(home, **extra), timeout=900)


@pytest.fixture(scope="module")
def home():
    folder = Path(tempfile.mkdtemp(prefix="cloakd home 100%-"))  # a space and systemd's specifier sign
    (folder / "settings").mkdir()
    (folder / "settings" / "user-dirs.dirs").write_text(  # as xdg-user-dirs writes it, in a German desktop
        '# This file is written by xdg-user-dirs-update\nXDG_DESKTOP_DIR="$HOME/Schreibtisch"\n'
        'XDG_PICTURES_DIR="$HOME/Bilder"\n'
    )
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def first_run(home):
    return install(home)


def paths(home: Path) -> dict[str, Path]:
    return {
        "unit": home / "settings" / "systemd" / "user" / "cloakd.service",
        "config": home / "settings" / "cloakd" / "cloakd.yaml",
        "env": home / ".local" / "share" / "cloakd" / "env",
        "command": home / ".local" / "bin" / "cloakd",
        "state": home / "var" / "state" / "cloakd",
        "photos": home / "Bilder" / "cloakd",  # the pictures folder user-dirs.dirs names
    }


def test_the_user_install_puts_everything_in_the_home(home, first_run):
    quiet(first_run)
    p = paths(home)
    assert "[2/4] torch" in first_run.stdout
    assert "start the service with 'systemctl --user enable --now cloakd'" in first_run.stdout
    assert p["command"].is_symlink() and p["command"].resolve() == (p["env"] / "bin" / "cloakd").resolve()
    unit = p["unit"].read_text()
    assert f"ExecStart={unit_word(p['command'])} run --config {unit_word(p['config'])}\n" in unit and "@" not in unit
    assert "WantedBy=default.target" in unit and "User=" not in unit and "Capabilit" not in unit.split("[Unit]")[1]
    for name in ("outbound", "ready", "held", "originals"):
        assert (p["photos"] / name).is_dir(), name
    assert p["state"].stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "line, folder",
    [
        (None, "~/Pictures"),  # no user-dirs.dirs
        ('XDG_PICTURES_DIR="$HOME/Images"', "~/Images"),
        ('XDG_PICTURES_DIR="/srv/photos/me/"', "/srv/photos/me"),
        ('XDG_PICTURES_DIR="$HOME/"', "~/Pictures"),  # disabled: xdg-user-dirs points it at the home
        ('XDG_PICTURES_DIR="$(touch pwned)"', "~/Pictures"),  # read, never run
        ('XDG_MUSIC_DIR="$HOME/Musik"', "~/Pictures"),
        ('XDG_PICTURES_DIR="$HOME/Bilder" # mine', "~/Bilder"),  # stops at the closing quote
        ('XDG_PICTURES_DIR="$HOME/a\\$b \\"c\\""', '~/a$b "c"'),  # as xdg-user-dirs-update escapes
        ('XDG_PICTURES_DIR="//"', "~/Pictures"),
        ("XDG_PICTURES_DIR=$HOME/Bilder", "~/Pictures"),  # not the file's form
    ],
)
def test_the_photo_folders_go_into_the_pictures_folder_xdg_user_dirs_names(tmp_path, line, folder):
    """install.sh's own pictures_dir, run alone (the whole install is the module's tests above)."""
    function = SCRIPT.read_text().split("\npictures_dir() {\n")[1].split("\n}\n")[0]
    if line is not None:
        (tmp_path / "settings").mkdir()
        (tmp_path / "settings" / "user-dirs.dirs").write_text(f"# written by xdg-user-dirs-update\n{line}\n")
    script = f"pictures_dir() {{\n{function}\n}}\npictures_dir"
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "settings"), "PATH": os.environ["PATH"]}
    out = subprocess.run(["bash", "-euc", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
    assert out.returncode == 0 and out.stdout == folder.replace("~", str(tmp_path)) + "\n", out.stderr
    assert not (tmp_path / "pwned").exists()


def test_the_installed_user_unit_passes_systemd_analyze_user_verify(home, first_run):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (scripts/test.sh installs the systemd package)")
    unit = paths(home)["unit"]  # as installed: its ExecStart is the installed command, which must exist
    result = subprocess.run(
        [analyze, "--user", "verify", str(unit)], capture_output=True, text=True, timeout=60, env=environment(home)
    )
    if "Failed to connect to bus" in result.stderr or "Failed to initialize manager" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run in this container: {result.stderr.strip()[:200]}")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_cloakds_loader_accepts_the_configuration_of_one_user_the_caller(home, first_run):
    p = paths(home)
    check = subprocess.run(
        [str(p["command"]), "check-config", "--config", str(p["config"])], capture_output=True, text=True, timeout=120
    )
    assert (check.returncode, check.stdout) == (0, f"{p['config']}: OK (1 user, 1 outbound folder)\n"), check.stderr
    config = load_config(p["config"])
    [user] = config.users.values()
    assert user.name == ME and user.account == ME and config.state_dir == p["state"]
    assert [(f.path, f.recursive) for f in user.outbound] == [(p["photos"] / "outbound", True)]
    assert (user.ready, user.held) == (p["photos"] / "ready", p["photos"] / "held")
    assert (user.originals.policy, user.originals.archive) == ("archive", p["photos"] / "originals")


def test_the_installed_service_runs_with_that_configuration(home, first_run):
    """What the unit's ExecStart runs, as the caller: a photo dropped into outbound comes out in ready."""
    p = paths(home)
    with Service(p["config"], command=p["command"]) as service:
        service.wait_ready(180)
        shutil.copyfile(DATA / "metadata" / "BlueSquare.jpg", p["photos"] / "outbound" / "square.jpg")
        wait_for(lambda: files(p["photos"] / "ready") == ["square.jpg"], 120, "square.jpg in ready", service)
        wait_for(lambda: files(p["photos"] / "originals") == ["square.jpg"], 60, "the original archived", service)
        assert service.stop() == 0
    assert (p["state"] / "ledger.sqlite3").exists() and (p["state"] / "service.json").exists()
    for suffix in (".log", ".notify"):  # the test's own files beside the configuration
        p["config"].with_suffix(suffix).unlink(missing_ok=True)


def test_again_keeps_the_users_configuration_then_uninstall_and_purge(home, first_run):
    p = paths(home)
    p["config"].write_text(p["config"].read_text() + "# my edit\n")
    dirs = home / "settings" / "user-dirs.dirs"
    dirs.write_text(dirs.read_text().replace("$HOME/Bilder", "$HOME/Fotos"))  # renamed since the first install
    again = install(home)
    quiet(again)
    assert "exists, left as it is" in again.stdout and p["config"].read_text().endswith("# my edit\n")
    assert f"photos into {p['photos'] / 'outbound'};" in again.stdout  # the kept configuration's folder
    assert not (home / "Fotos").exists()

    removed = install(home, "--uninstall")
    quiet(removed)
    assert not p["unit"].exists() and not p["env"].exists() and not p["command"].is_symlink()
    assert p["config"].exists() and p["state"].is_dir() and "--user --uninstall --purge" in removed.stdout
    nothing = install(home, "--uninstall")
    quiet(nothing)
    assert nothing.stdout.startswith("install.sh: nothing to remove: cloakd is not installed for ")
    purged = install(home, "--uninstall", "--purge")
    quiet(purged)
    assert not p["config"].parent.exists() and not p["state"].exists()
    assert (p["photos"] / "ready" / "square.jpg").exists()  # the photos are the user's: never removed


@pytest.mark.parametrize(
    ("options", "extra", "says"),
    [
        ((), {"DESTDIR": "/tmp/stage"}, "DESTDIR is for --system; --user installs into your home"),
        ((), {"SUDO_USER": "alice"}, "run it without sudo (as alice)"),
        (("--system",), {}, "--user does not go with --system"),
        (("--uninstall", "--all"), {}, "unknown option --all: --user --uninstall takes only --purge"),
    ],
)
def test_mistakes_are_refused_before_anything_is_done(tmp_path, options, extra, says):
    if "SUDO_USER" in extra and os.geteuid() != 0:
        pytest.skip("the sudo check applies to root")
    run = install(tmp_path, *options, **extra)
    assert run.returncode == 1 and says in run.stderr and run.stdout == "", run.stdout + run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written but the test's runtime dir
