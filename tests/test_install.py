"""`scripts/install.sh --system` into a staging root (DESTDIR): everything the unit needs is installed, the
installed unit passes `systemd-analyze verify`, a second run changes nothing of the administrator's, and
`--uninstall` removes it (the configuration and the enrolled state only with `--purge`).

The environment is really built (torch from the local CPU wheel, cloakd from a clean copy of the checkout,
not editable): about a minute and a half, which is what proves that the installed package is complete."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "install.sh"


def install(root: Path, *options: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESTDIR": str(root), "PYTHON": str(Path(sys.base_prefix) / "bin" / "python3")}
    return subprocess.run(["bash", str(SCRIPT), *options], capture_output=True, text=True, env=env, timeout=900)


def quiet(run: subprocess.CompletedProcess[str]) -> None:
    """It worked, said what it did, and printed nothing a user would fear."""
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "ERROR" not in output and "error:" not in output.lower(), output


@pytest.fixture(scope="module")
def root():
    folder = Path(tempfile.mkdtemp(prefix="cloakd-destdir-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def first_run(root):
    return install(root, "--system")


def test_the_system_install_puts_everything_in_place(root, first_run):
    quiet(first_run)
    assert "[2/4] torch" in first_run.stdout and "the systemd unit" in first_run.stdout
    command = root / "usr" / "local" / "bin" / "cloakd"
    assert command.is_symlink() and command.resolve() == (root / "opt" / "cloakd" / "bin" / "cloakd").resolve()
    assert (root / "opt" / "cloakd" / "bin" / "cloakd").read_text().startswith("#!/opt/cloakd/bin/python")
    unit = root / "etc" / "systemd" / "system" / "cloakd.service"
    assert unit.read_text() == (REPO / "systemd" / "cloakd.service").read_text()
    config = root / "etc" / "cloakd" / "cloakd.yaml"
    assert config.read_text() == (REPO / "config" / "cloakd.example.yaml").read_text()
    assert (root / "var" / "lib" / "cloakd").stat().st_mode & 0o777 == 0o700
    assert (root / "usr" / "share" / "doc" / "cloakd" / "README.md").exists()  # the unit's Documentation=


def test_the_installed_package_is_complete_and_not_the_checkout(root, first_run):
    python = root / "opt" / "cloakd" / "bin" / "python"
    probe = (
        "import cloakd.core.targets as t, cloakd.daemon.cli as c; print(t.__file__); "
        "print(len(t.TargetBank.load().names)); c.build_parser()"
    )
    run = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd="/", timeout=120)
    assert run.returncode == 0, run.stderr
    where, identities = run.stdout.split()
    assert Path(where).is_relative_to(root / "opt" / "cloakd") and int(identities) > 100


def test_a_staged_environment_runs_at_its_final_path_with_the_interpreter_it_names(root, first_run):
    """DESTDIR: the environment links to the interpreter it was built with (the install says which); mounted at
    /opt/cloakd (a private mount namespace: the real /opt is not touched), with that interpreter at its
    path, the installed command runs."""
    interpreter = os.readlink(root / "opt" / "cloakd" / "bin" / "python3")
    assert Path(interpreter).resolve() == (Path(sys.base_prefix) / "bin" / "python3").resolve()
    assert f"staged: the environment runs {interpreter} (Python 3." in first_run.stdout
    assert "it must exist at that path on the target" in first_run.stdout
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("mounting the staged /opt/cloakd at its final path needs unshare and root")
    mount = (
        f"mount -t tmpfs cloakd-test /opt && mkdir /opt/cloakd && mount --bind {root}/opt/cloakd /opt/cloakd "
        f"&& {root}/usr/local/bin/cloakd --version"
    )
    run = subprocess.run([unshare, "--mount", "sh", "-c", mount], capture_output=True, text=True, timeout=120)
    if run.returncode != 0 and "unshare failed" in run.stderr:
        pytest.skip(f"no mount namespace here: {run.stderr.strip()[:200]}")
    assert (run.returncode, run.stdout) == (0, f"cloakd {version('cloakd')}\n"), run.stderr


def test_the_installed_unit_passes_systemd_analyze_verify(root, first_run, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (scripts/test.sh installs the systemd package)")
    # verify checks that ExecStart's program exists and is executable: look for it in the staging root
    installed = (root / "etc" / "systemd" / "system" / "cloakd.service").read_text()
    unit = tmp_path / "cloakd.service"
    unit.write_text(installed.replace("/usr/local/bin/cloakd", str(root / "usr" / "local" / "bin" / "cloakd")))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    if "Failed to connect to bus" in result.stderr or "Failed to initialize manager" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run in this container: {result.stderr.strip()[:200]}")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_again_keeps_the_administrators_files_then_uninstall_and_purge(root, first_run):
    config = root / "etc" / "cloakd" / "cloakd.yaml"
    config.write_text(config.read_text() + "# the administrator's edit\n")
    ledger = root / "var" / "lib" / "cloakd" / "ledger.sqlite3"
    ledger.write_bytes(b"state")
    again = install(root, "--system")
    quiet(again)
    assert "exists, left as it is" in again.stdout and config.read_text().endswith("# the administrator's edit\n")
    assert (root / "usr" / "local" / "bin" / "cloakd").resolve().exists()

    removed = install(root, "--uninstall")
    quiet(removed)
    assert not (root / "opt" / "cloakd").exists() and not (root / "usr" / "local" / "bin" / "cloakd").is_symlink()
    assert not (root / "etc" / "systemd" / "system" / "cloakd.service").exists()
    assert config.exists() and ledger.read_bytes() == b"state" and "--purge" in removed.stdout
    purged = install(root, "--uninstall", "--purge")
    quiet(purged)
    assert not config.exists() and not ledger.parent.exists()
    nothing = install(root, "--uninstall")
    quiet(nothing)
    assert nothing.stdout == (
        "install.sh: nothing to remove: cloakd is not installed (/opt/cloakd, /usr/local/bin/cloakd, "
        "/etc/systemd/system/cloakd.service and /usr/share/doc/cloakd do not exist)\n"
    )
