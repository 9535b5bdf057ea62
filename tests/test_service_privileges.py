"""Every file operation for a user runs with that user's rights; links in a user's folder lead nowhere else.

These tests run as root (as in CI) with a real second account (cloakd-test-b) and real links.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cloakd.daemon import deliver
from cloakd.daemon.privileges import Account, RefusedFile, acting_as, read_photo
from conftest import DATA
from servicekit import copy_as, shared_tmp, user_tree

PHOTO = DATA / "metadata" / "BlueSquare.jpg"


@pytest.fixture
def setup(owner):
    """A user tree for the second account, plus root-only files beside it (another user's secrets)."""
    with shared_tmp("cloakd-priv-") as base:
        folders = user_tree(base, owner)
        secret = base / "root-secret.jpg"
        secret.write_bytes(PHOTO.read_bytes())
        secret.chmod(0o600)
        group_secret = base / "root-group-secret.jpg"
        group_secret.write_bytes(b"group-readable by root's group only")
        group_secret.chmod(0o640)
        yield base, folders, Account.lookup(owner.pw_name), secret, group_secret


def test_a_thread_acting_as_the_user_has_exactly_the_users_rights(setup, owner):
    base, folders, user, secret, group_secret = setup
    inside, outside = threading.Event(), threading.Event()
    results = {}

    def act():
        with acting_as(user):
            for name, path in (("secret", secret), ("group", group_secret), ("shadow", Path("/etc/shadow"))):
                try:
                    path.read_bytes()
                    results[name] = "read"
                except PermissionError:
                    results[name] = "denied"
            try:
                (base / "made-by-root-dir.txt").write_text("x")  # base belongs to root
                results["write root dir"] = "written"
            except PermissionError:
                results["write root dir"] = "denied"
            (folders["ready"] / "mine.txt").write_text("x")
            inside.set()
            outside.wait(5)  # meanwhile the main thread keeps root's rights
        results["after"] = secret.read_bytes() == PHOTO.read_bytes()

    t = threading.Thread(target=act)
    t.start()
    assert inside.wait(5)
    assert secret.read_bytes() == PHOTO.read_bytes()  # other threads are not affected
    outside.set()
    t.join()
    assert results == {
        "secret": "denied",
        "group": "denied",
        "shadow": "denied",
        "write root dir": "denied",
        "after": True,
    }
    st = (folders["ready"] / "mine.txt").stat()
    assert (st.st_uid, st.st_gid) == (owner.pw_uid, owner.pw_gid)


def test_links_out_of_the_outbound_folder_are_refused(setup):
    base, folders, user, secret, _ = setup
    out = folders["out"]
    os.symlink("/etc/shadow", out / "shadow.jpg")
    os.symlink(secret, out / "other-user.jpg")
    os.symlink("/etc/hostname", out / "readable-elsewhere.jpg")  # readable by anyone, still not followed
    (out / "sub").mkdir()
    os.chown(out / "sub", user.uid, user.gid)
    os.symlink("/etc", out / "sub" / "etc")
    readable = base / "root-readable.jpg"
    readable.write_bytes(PHOTO.read_bytes())
    readable.chmod(0o644)
    os.link(readable, out / "hardlink.jpg")  # someone else's file, readable, hard-linked in: refused
    os.link(secret, out / "hardlink-secret.jpg")  # someone else's unreadable file: the kernel refuses
    os.mkfifo(out / "pipe.jpg")
    for name, message in (
        ("shadow.jpg", "leads to /etc/shadow"),
        ("other-user.jpg", "outside"),
        ("readable-elsewhere.jpg", "outside"),
        ("sub/etc/passwd", "leads to /etc/passwd"),
        ("hardlink.jpg", "hard link to a file owned by root"),
        ("pipe.jpg", r"a named pipe \(FIFO\), not a photo"),
    ):
        with pytest.raises(RefusedFile, match=message):
            read_photo(user, out / name, [out])
    with pytest.raises(PermissionError):
        read_photo(user, out / "hardlink-secret.jpg", [out])


def test_links_inside_the_outbound_folder_are_read_as_the_user(setup, owner):
    _, folders, user, _, _ = setup
    out = folders["out"]
    copy_as(PHOTO, out / "real.jpg", owner)
    os.symlink(out / "real.jpg", out / "alias.jpg")
    original = read_photo(user, out / "alias.jpg", [out])
    assert original.data == PHOTO.read_bytes() and original.via_link
    assert not read_photo(user, out / "real.jpg", [out]).via_link


def test_single_user_mode_refuses_links_out_too(setup, owner):
    """Without root (here: a child process that dropped to the second account), the same policy holds,
    although the kernel would let the account read the link's target."""
    _, folders, _, _, _ = setup
    os.symlink("/etc/hostname", folders["out"] / "hostname.jpg")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become the second account for good, then try
        try:
            os.setgroups([])
            os.setgid(owner.pw_gid)
            os.setuid(owner.pw_uid)
            me = Account.current()
            try:
                read_photo(me, folders["out"] / "hostname.jpg", [folders["out"]])
                verdict = b"read"
            except RefusedFile:
                verdict = b"refused" if Path("/etc/hostname").read_bytes() else b"?"
            os.write(write, verdict)
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    verdict = os.read(read, 100)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0 and verdict == b"refused"


def test_delivery_never_overwrites_and_belongs_to_the_user(setup, owner):
    base, folders, user, secret, _ = setup
    ready = folders["ready"]
    copy_as(PHOTO, ready / "a.jpg", owner)
    os.symlink("/etc/passwd", ready / "b.jpg")  # a planted link at an output name
    assert deliver.free_name(user, ready / "a.jpg") == ready / "a-1.jpg"
    assert deliver.free_name(user, ready / "b.jpg") == ready / "b-1.jpg"
    passwd = Path("/etc/passwd").read_bytes()
    for name in ("a.jpg", "b.jpg"):
        with pytest.raises(FileExistsError):
            deliver.write_new(user, ready / name, b"new bytes", 0o640, tag="7")
    assert (ready / "a.jpg").read_bytes() == PHOTO.read_bytes() and Path("/etc/passwd").read_bytes() == passwd
    deliver.write_new(user, ready / "sub" / "c.jpg", b"new bytes", 0o640, tag="8")
    st = (ready / "sub" / "c.jpg").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (owner.pw_uid, 0o640)
    assert (ready / "sub").stat().st_uid == owner.pw_uid
    assert sorted(p.name for p in ready.rglob("*")) == ["a.jpg", "b.jpg", "c.jpg", "sub"]  # no temporary left
    os.symlink(base, folders["held"] / "escape")  # a user's folder that leads into root's folder
    with pytest.raises(PermissionError):
        deliver.write_new(user, folders["held"] / "escape" / "x.jpg", b"x", 0o644, tag="9")
    assert not (base / "x.jpg").exists()
