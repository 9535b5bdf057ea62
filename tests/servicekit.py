"""Helpers for the service tests: a second unix account, user folder trees, configs, and the real service
started as a subprocess (``cloakd run``) with a notification socket standing in for systemd's."""

from __future__ import annotations

import errno
import io
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import CLOAKD, DATA

#: created by scripts/test.sh (useradd) or, when missing and we are root, by the fixture below
SECOND_ACCOUNT = "cloakd-test-b"


def second_account() -> pwd.struct_passwd:
    """The second unix account the privilege tests act as (created if missing; root only)."""
    if os.geteuid() != 0:
        pytest.skip("the privilege and service tests run as root (as in CI): they switch to a second account")
    try:
        return pwd.getpwnam(SECOND_ACCOUNT)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SECOND_ACCOUNT], check=True
        )
        return pwd.getpwnam(SECOND_ACCOUNT)


@contextmanager
def shared_tmp(prefix: str) -> Iterator[Path]:
    """A temporary folder the second account can enter (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def user_tree(base: Path, account: pwd.struct_passwd, *names: str) -> dict[str, Path]:
    """Folders ``base/NAME`` owned by ``account`` (out, ready, held, archive by default)."""
    folders = {}
    for name in names or ("out", "ready", "held", "archive"):
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, account.pw_uid, account.pw_gid)
        folders[name] = folder
    return folders


def user_settings(folders: dict[str, Path], account: str, **keys) -> dict:
    """A user's configuration over ``folders`` (user_tree's): outbound, ready, held, originals archived;
    ``keys`` add to or override it."""
    user = {
        "account": account,
        "outbound": [str(folders["out"])],
        "ready": str(folders["ready"]),
        "held": str(folders["held"]),
        "originals": {"policy": "archive", "archive": str(folders["archive"])},
    }
    return {**user, **keys}


def two_users(base: Path, owner: pwd.struct_passwd, **keys) -> Path:
    """A config file of alice and bob, each over user_tree(base / NAME), acting as ``owner``; ``keys`` as
    in user_settings."""
    users = {name: user_settings(user_tree(base / name, owner), owner.pw_name, **keys) for name in ("alice", "bob")}
    path = base / "cloakd.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(base / "state"), "users": users}))
    return path


def write_config(path: Path, folders: dict[str, Path], account: str, **settings) -> Path:
    """A service config for one user ``bee`` over ``folders``; ``settings`` override globals and, with a
    ``user_`` prefix, the user's keys."""
    keys = {k.removeprefix("user_"): v for k, v in settings.items() if k.startswith("user_")}
    user = user_settings(folders, account, **{"mode": "low", **keys})
    config = {
        "state_dir": str(path.parent / "state"),
        "log_level": "debug",
        "stable_seconds": 1,
        "rescan_seconds": 30,
        "retry": {"attempts": 5, "first_delay_seconds": 1},
        "stop_timeout_seconds": 20,
    }
    config.update({k: v for k, v in settings.items() if not k.startswith("user_")})
    config["users"] = {"bee": user}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def copy_as(src: Path, dst: Path, account: pwd.struct_passwd) -> Path:
    """Copy a test photo into a user's folder, owned by that user (as if the user had put it there)."""
    shutil.copyfile(src, dst)
    os.chown(dst, account.pw_uid, account.pw_gid)
    return dst


def tiny_photos(folder: Path, owner, count: int) -> list[str]:
    """Distinct small JPEGs cut from a real photo (no faces), plus real files in other formats."""
    source = Image.open(DATA / "metadata" / "DSCN0010.jpg").convert("RGB")
    names = []
    for i in range(count):
        x, y = (i * 37) % (source.width - 96), (i * 53) % (source.height - 72)
        buffer = io.BytesIO()
        source.crop((x, y, x + 96, y + 72)).save(buffer, "JPEG", quality=85)
        path = folder / f"crop{i:03d}.jpg"
        path.write_bytes(buffer.getvalue())
        os.chown(path, owner.pw_uid, owner.pw_gid)
        names.append(path.name)
    for name in ("BlueSquare.jpg", "flower.webp", "exif.png"):
        copy_as(DATA / "metadata" / name, folder / name, owner)
        names.append(name)
    return names


def bad_files(folder: Path, owner) -> list[str]:
    truncated = (DATA / "metadata" / "DSCN0010.jpg").read_bytes()[:5000]
    bad = {"truncated.jpg": truncated, "notes.jpg": b"this is not a photo\n", "empty.png": b""}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
        os.chown(folder / name, owner.pw_uid, owner.pw_gid)
    return sorted(bad)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, service: "Service | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if service is not None and service.proc.poll() is not None:
            raise AssertionError(
                f"the service exited ({service.proc.returncode}) while waiting for {what}:\n{service.log()}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f":\n{service.log()}" if service else ""))


class Service:
    """``cloakd run --config FILE`` as a subprocess; ``messages`` are what it sent to NOTIFY_SOCKET. ``command``:
    another cloakd than the tests' (an installed one)."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, command: Path = CLOAKD):
        self.config = config
        self.log_path = config.with_suffix(".log")
        self.socket_path = str(config.with_suffix(".notify"))
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.socket_path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._listening = True
        self._listener = threading.Thread(target=self._listen, daemon=True)  # like systemd: always reading
        self._listener.start()
        environment = {**os.environ, "NOTIFY_SOCKET": self.socket_path, **(env or {})}
        environment.pop("JOURNAL_STREAM", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(command), "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=environment
            )

    def _listen(self) -> None:
        while self._listening:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, socket.timeout, BlockingIOError):
                continue
            except OSError:
                return

    def receive(self) -> list[str]:
        """What the service has sent so far."""
        return list(self.messages)

    def _close(self) -> None:
        time.sleep(0.3)  # the last datagrams
        self._listening = False
        self._listener.join()
        self.sock.close()

    def wait_ready(self, timeout: float = 90) -> None:
        wait_for(lambda: any("READY=1" in m for m in self.receive()), timeout, "READY=1", self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the service did not stop within {timeout} s:\n{self.log()}")
        self._close()
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._listening:
            self._close()


def files(folder: Path) -> list[str]:
    """Visible file names under ``folder`` (relative), sorted; temporary dot-files count as visible too."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


@contextmanager
def small_disk(folder: Path, size: str, owner: pwd.struct_passwd | None = None) -> Iterator[Path]:
    """``folder`` (created) as a tmpfs of ``size`` (e.g. "48k", "16m"), owned by ``owner`` (default root, mode
    0700), unmounted after; skips the test where a tmpfs cannot be mounted (needs root and mount rights)."""
    folder.mkdir(parents=True, exist_ok=True)
    refused = mount_tmpfs(folder, size, owner)
    if refused:
        pytest.skip(f"cannot mount a small tmpfs here ({refused}): the full-disk cases need one")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def mount_tmpfs(folder: Path, size: str, owner: pwd.struct_passwd | None = None) -> str:
    """Mount a tmpfs of ``size`` on ``folder``, owned by ``owner`` (default root, mode 0700); "" when it is
    mounted, else why not (mounting needs root and mount rights). The caller unmounts it."""
    uid, gid, mode = (owner.pw_uid, owner.pw_gid, "0755") if owner else (0, 0, "0700")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode},uid={uid},gid={gid}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    return "" if result.returncode == 0 else result.stderr.strip() or f"mount exited with {result.returncode}"


def resize(folder: Path, size: str) -> None:
    """Give the tmpfs mounted at ``folder`` (small_disk) a new size: space freed (or taken) at once."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def fill_up(folder: Path) -> Path:
    """Fill ``folder``'s file system to the last byte with a file ``folder/filler``; delete it to free the space."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
    return filler
