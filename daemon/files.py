"""Writing files safely: a new file appears complete or not at all, and never over an existing file.

One writer serves every result cloakd writes (the one-shot commands, and the service through deliver.py):
:func:`write_new` writes the bytes to a hidden temporary file in the destination folder (sync clients and
cloakd's own watcher ignore dot-files), fsyncs it, renames it to its name without replacing anything
(:func:`rename_noreplace`), and fsyncs the folder so that the rename survives a power cut.
:func:`write_new_file` picks the first free name ``stem.ext``, ``stem-1.ext``, ... for it.

A rename that cannot replace: ``renameat2(RENAME_NOREPLACE)``; on file systems without it, a hard link
then unlink (which never replaces either); on file systems with neither (FAT, some network shares), a
rename after checking that the name is free, the best those file systems allow.

Permissions of a new file: ``mode`` when the caller gives one (the service: its folder's, deliver.py);
otherwise the process's umask decides, as for any file a program creates (0644 with the usual umask 022).

:func:`replace_file` is for cloakd's own state records (daemon/state.py), which are replaced as a whole,
atomically, and readable by their owner only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
#: errors of link(2) on file systems that have no hard links
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)
#: the longest file name, in bytes (ext4, XFS, Btrfs, tmpfs; a name of exactly this length is fine)
NAME_MAX = 255
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``dst`` (see the module docstring)."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: the file system has no RENAME_NOREPLACE
        raise OSError(err, os.strerror(err), str(dst))
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_name(path: Path) -> Path:
    """``path``, or ``name-1.ext``, ``name-2.ext``... whichever does not exist yet (the stem shortened when
    the number would make the name longer than a file name may be)."""
    candidate, n = path, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(fit_name(f"{path.stem}-{n}", path.suffix, keep_end=len(f"-{n}")))
    return candidate


def fit_name(stem: str, suffix: str, *, keep_end: int = 0) -> str:
    """``stem + suffix``, with ``stem`` cut (whole characters, keeping its last ``keep_end`` characters) so
    that the name fits in NAME_MAX bytes (255 on every Linux file system)."""
    room = NAME_MAX - len(os.fsencode(suffix))
    if len(os.fsencode(stem)) <= room:
        return stem + suffix
    end = stem[len(stem) - keep_end :] if keep_end else ""
    head = stem[: len(stem) - keep_end]
    while head and len(os.fsencode(head + end)) > room:
        head = head[:-1]
    return head + end + suffix


def write_new(
    path: Path,
    data: bytes,
    *,
    mode: int | None = None,
    tmp: Path | None = None,
    before_rename: Callable[[], None] | None = None,
) -> None:
    """Create ``path`` holding ``data``, atomically and durably; FileExistsError if the name is taken.

    ``mode``: the new file's permissions exactly (None: the umask decides). ``tmp``: the temporary name
    to write under (default: a fresh hidden name in the same folder); it must not exist. ``before_rename``:
    called once the temporary file is complete (the crash tests' hook, daemon/crashpoints.py).
    """
    path = Path(path)
    tmp = tmp or path.with_name(f".{path.name}.{secrets.token_hex(4)}.cloakd-tmp")
    _write_temporary(tmp, data, mode)
    if before_rename is not None:
        before_rename()
    put_in_place(tmp, path)
    fsync_dir(path.parent)


def put_in_place(tmp: Path, dst: Path) -> None:
    """Rename the finished ``tmp`` to ``dst`` without replacing anything; ``tmp`` is removed if that fails."""
    try:
        rename_noreplace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise


def write_new_file(folder: Path, stem: str, extension: str, data: bytes, *, mode: int | None = None) -> Path:
    """Durably create ``folder/stem[-N]extension`` holding ``data``; returns the path used."""
    while True:
        target = free_name(Path(folder) / f"{stem}{extension}")
        try:
            write_new(target, data, mode=mode)
            return target
        except FileExistsError:
            continue  # taken since free_name looked: the next one


def replace_file(path: Path, data: bytes) -> None:
    """Durably replace ``path`` (a state record) with ``data``, readable by its owner only (0600).

    The folder must exist. Temporary file, fsync, rename over the old record, fsync the folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if os.path.lexists(tmp):  # left by an interrupted write
        os.unlink(tmp)
    _write_temporary(tmp, data, 0o600)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_temporary(tmp: Path, data: bytes, mode: int | None) -> None:
    """Create ``tmp`` exclusively (never through a link), write ``data``, set ``mode``, fsync."""
    fd = os.open(tmp, _CREATE, 0o666 if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException as e:
        os.close(fd)
        os.unlink(tmp)  # never a partial file: e.g. the disk filled up during the write
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(tmp)  # a write's error names no file: say where (which disk is full)
        raise
    os.close(fd)
