"""Watching outbound folders: a file is taken once, complete, and temporary names never."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from cloakd.daemon.config import load_config
from cloakd.daemon.privileges import Account
from cloakd.daemon.watch import Candidates, Watcher, is_temporary
from conftest import DATA
from servicekit import second_account, shared_tmp, user_tree, write_config

PHOTO = DATA / "metadata" / "DSCN0010.jpg"


def test_temporary_names():
    temporary = [
        "IMG_1.jpg.part",
        "IMG_1.JPG.crdownload",
        "~$report.jpg",
        ".syncthing.IMG_1.jpg.tmp",
        "a.jpg.partial",
        ".hidden.jpg",
        ".cloakd-12.tmp",
        "photo.jpg~",
        "Thumbs.db",
        "desktop.ini",
        "x.tmp",
        "x.jpg.download",
        ".~lock.x.jpg#",
    ]
    photos = ["IMG_1.jpg", "IMG_1.HEIC", "party.partial.jpg", "tmp.jpg", "my~photo.png", "part.webp"]
    assert [n for n in temporary if not is_temporary(n)] == []
    assert [n for n in photos if is_temporary(n)] == []


@pytest.fixture(scope="module")
def account():
    owner = second_account()
    return owner, Account.lookup(owner.pw_name)


def test_stable_only_after_size_and_mtime_stop_changing(tmp_path):
    acct = Account.current()
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    c = Candidates(stable_seconds=5)
    c.note("bee", str(path))
    c.note("bee", str(tmp_path / "b.jpg.part"))  # ignored
    assert len(c) == 1
    t = 1000.0
    assert c.take_stable({"bee": acct}, now=t) == []  # first look
    with open(path, "ab") as f:
        f.write(b"y" * 10)  # still growing
    assert c.take_stable({"bee": acct}, now=t + 4) == []
    assert c.take_stable({"bee": acct}, now=t + 8) == []  # 4 s since the last change
    taken = c.take_stable({"bee": acct}, now=t + 9.5)
    assert [(u, p, st.st_size) for u, p, st in taken] == [("bee", str(path), 110)]
    assert c.take_stable({"bee": acct}, now=t + 20) == [] and len(c) == 0  # taken once
    c.note("bee", str(tmp_path / "gone.jpg"))
    assert c.take_stable({"bee": acct}, now=t) == [] and len(c) == 0  # vanished: dropped


class Harness:
    """A watcher on real folders; ``collect`` runs the service's take-stable loop for a while."""

    def __init__(self, base: Path, owner, polling: bool = False, recursive: bool = True):
        self.folders = user_tree(base, owner)
        self.owner = owner
        out = {"path": str(self.folders["out"]), "recursive": recursive, "polling": polling}
        config = load_config(
            write_config(
                base / "cloakd.yaml",
                self.folders,
                owner.pw_name,
                stable_seconds=0.6,
                poll_seconds=0.5,
                user_outbound=[out],
            )
        )
        self.accounts = {"bee": Account.lookup(owner.pw_name)}
        self.candidates = Candidates(config.stable_seconds)
        self.watcher = Watcher(config, self.accounts, self.candidates)
        self.taken: list[tuple[float, str, int]] = []

    def collect(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _, path, st in self.candidates.take_stable(self.accounts):
                self.taken.append((time.monotonic(), os.path.relpath(path, self.folders["out"]), st.st_size))
            time.sleep(0.05)

    def names(self) -> list[str]:
        return sorted(name for _, name, _ in self.taken)


def slow_write(path: Path, data: bytes, chunks: int, pause: float) -> float:
    """Write ``data`` in pieces with pauses (a slow copy); returns the monotonic time of the close."""
    step = len(data) // chunks + 1
    with open(path, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)
    return time.monotonic()


def test_inotify_takes_complete_files_once(account):
    owner, _ = account
    data = PHOTO.read_bytes()
    with shared_tmp("cloakd-watch-") as base:
        (base / "before").mkdir()
        h = Harness(base, owner)
        out = h.folders["out"]
        shutil.copyfile(PHOTO, out / "there-before-start.jpg")
        h.watcher.start()
        try:
            h.watcher.rescan()
            closed = {}

            def writers():
                closed["slow.jpg"] = slow_write(out / "slow.jpg", data, 8, 0.25)  # 2 s, pauses < stable time
                slow_write(out / "renamed.jpg.part", data, 4, 0.25)
                os.rename(out / "renamed.jpg.part", out / "renamed.jpg")
                closed["renamed.jpg"] = time.monotonic()
                (out / "download.jpg.crdownload").write_bytes(data)  # an abandoned download: never taken
                (out / ".hidden.jpg").write_bytes(data)
                shutil.copyfile(PHOTO, base / "before" / "moved.jpg")
                os.rename(base / "before" / "moved.jpg", out / "moved.jpg")  # moved in from outside
                (base / "before" / "album").mkdir()
                shutil.copyfile(PHOTO, base / "before" / "album" / "inside.jpg")
                os.rename(base / "before" / "album", out / "album")  # a whole folder moved in
                os.symlink("/etc/hostname", out / "link.jpg")  # taken; the worker refuses it with a reason

            t = threading.Thread(target=writers)
            t.start()
            h.collect(6.0)
            t.join()
        finally:
            h.watcher.stop()
        assert h.names() == [
            "album/inside.jpg",
            "link.jpg",
            "moved.jpg",
            "renamed.jpg",
            "slow.jpg",
            "there-before-start.jpg",
        ]
        times = {name: when for when, name, _ in h.taken}
        assert times["slow.jpg"] >= closed["slow.jpg"] + 0.5  # only after the close, then stable
        assert times["renamed.jpg"] >= closed["renamed.jpg"]
        assert all(size == len(data) for _, name, size in h.taken if name != "link.jpg")


def test_polling_folders_and_non_recursive_folders(account):
    owner, _ = account
    with shared_tmp("cloakd-poll-") as base:
        h = Harness(base, owner, polling=True, recursive=False)
        out = h.folders["out"]
        (out / "sub").mkdir()
        shutil.copyfile(PHOTO, out / "sub" / "deep-before.jpg")
        h.watcher.start()
        try:
            h.watcher.rescan()
            shutil.copyfile(PHOTO, out / "polled.jpg")
            shutil.copyfile(PHOTO, out / "sub" / "deep-after.jpg")
            h.collect(3.0)
        finally:
            h.watcher.stop()
        assert h.names() == ["polled.jpg"]  # sub-folders are not watched when recursive is false
