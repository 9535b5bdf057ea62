"""Atomic, never-overwriting file placement in a user's folders, with that user's rights.

A new file appears under its final name complete or not at all (files.write_new): it is written under a
hidden temporary name in the destination folder (``.cloakd-TAG.tmp``, which sync clients and our own
watcher ignore), fsynced, renamed without replacing anything (an existing file is never replaced: the
caller picks the next free name), and the folder is fsynced so the rename itself survives a power cut.
The TAG is the ledger row id, so a temporary file left by a crash is recognised and removed on restart.

Permissions follow the user's folders: a new file gets the read and write bits of the folder it is written
into (a ready folder of mode 0750 gives 0640 files, 0700 gives 0600), and a missing sub-folder is created
with the mode of the nearest existing folder above it. The service's own umask (0077) plays no part.

Every function takes the account it acts for and runs with its rights (privileges.acting_as): files and
folders created here belong to that user.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

from . import files
from .crashpoints import reached
from .files import fsync_dir, rename_noreplace
from .privileges import Account, acting_as

TMP_PREFIX = ".cloakd-"


def tmp_name(tag: str) -> str:
    return f"{TMP_PREFIX}{tag}.tmp"


def free_name(account: Account, path: Path) -> Path:
    """``path``, or ``name-1.ext``, ``name-2.ext``... whichever does not exist yet (as the user sees it)."""
    with acting_as(account):
        return files.free_name(path)


def write_new(
    account: Account, path: Path, data: bytes, mode: int | None = None, *, tag: str, step: str = "output"
) -> None:
    """Create ``path`` with ``data`` atomically and durably; FileExistsError if the name is taken.

    Missing parent folders are created (owned by the user). ``mode``: the file's permissions exactly;
    by default the read and write bits of its folder. ``step``: what the file is, for the crash points
    (``output``: ``output-written`` before the rename, ``output-renamed`` after it).
    """
    with acting_as(account):
        _make_folders(path.parent)
        if mode is None:
            mode = os.stat(path.parent).st_mode & 0o666
        files.write_new(
            path,
            data,
            mode=mode,
            tmp=_fresh_tmp(path.parent, tag),
            before_rename=lambda: reached(f"{step}-written"),
        )
    reached(f"{step}-renamed")


def move_new(account: Account, src: Path, dst: Path, tag: str, step: str = "archive") -> None:
    """Move ``src`` (file or symbolic link itself) to ``dst`` without replacing anything; durable.

    Across file systems the content is copied (as a new file), then the source removed. ``step``: what the
    move is (``archive``, ``hold``), for the crash points (``archive-copied`` between the copy and the removal).
    """
    with acting_as(account):
        _make_folders(dst.parent)
        try:
            rename_noreplace(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            _copy_across(src, dst, tag)
            reached(f"{step}-copied")
            os.unlink(src)
        fsync_dir(dst.parent)
        fsync_dir(src.parent)


def _fresh_tmp(folder: Path, tag: str) -> Path:
    """The row's temporary name in ``folder``, cleared of what an interrupted attempt of the row left."""
    tmp = folder / tmp_name(tag)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    return tmp


def _copy_across(src: Path, dst: Path, tag: str) -> None:
    tmp = _fresh_tmp(dst.parent, tag)
    try:
        if src.is_symlink():
            os.symlink(os.readlink(src), tmp)
        else:
            shutil.copy2(src, tmp, follow_symlinks=False)
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException as e:  # e.g. the disk filled up during the copy: never leave a partial file
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(tmp)
        raise
    files.put_in_place(tmp, dst)


def remove(account: Account, path: Path, size: int, mtime_ns: int) -> bool:
    """Delete ``path`` if it is still the file that was processed (same size and mtime)."""
    if not same_file(account, path, size, mtime_ns):
        return False
    with acting_as(account):
        os.unlink(path)
        fsync_dir(path.parent)
        return True


def make_folder(account: Account, folder: Path) -> None:
    """Create ``folder`` (and missing parents) owned by the user, if it does not exist."""
    with acting_as(account):
        _make_folders(folder)


def _make_folders(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each with the mode of the nearest existing folder above."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    bits = os.stat(folder).st_mode & (0o777 | stat.S_ISGID)
    for new in reversed(missing):
        try:
            os.mkdir(new, bits)
        except FileExistsError:  # made meanwhile (or a file: the write that follows says so)
            continue
        os.chmod(new, bits)  # mkdir's mode is reduced by the umask


def same_file(account: Account, path: Path, size: int, mtime_ns: int) -> bool:
    """Whether ``path`` (itself, not a link's target) still has this size and mtime."""
    with acting_as(account):
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


def exists(account: Account, path: Path) -> bool:
    with acting_as(account):
        return os.path.lexists(path)


def sha256_of(account: Account, path: Path) -> str | None:
    """Content hash of a regular file, None if it does not exist or is not readable as one."""
    with acting_as(account):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()


def remove_tmp(account: Account, folder: Path, tag: str) -> None:
    """Remove the temporary file an interrupted write for ``tag`` may have left in ``folder``."""
    with acting_as(account):
        try:
            os.unlink(folder / tmp_name(tag))
        except FileNotFoundError:
            pass
