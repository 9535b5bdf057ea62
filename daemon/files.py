"""Writing result files safely: complete or absent, never over an existing file.

Two primitives serve every writer of results (the CLI here, the service in deliver.py): :func:`rename_noreplace`,
a rename that fails instead of replacing, and :func:`fsync_dir`, which makes a rename durable.

:func:`write_new_file` (the one-shot commands) writes the bytes to a hidden temporary file in the
destination folder (sync clients ignore dot-files), fsyncs it, and renames it without replacing to the
first free name ``stem.ext``, ``stem-1.ext``, ...; the folder is fsynced last. On file systems that have
neither RENAME_NOREPLACE nor hard links (FAT, some network shares) a checked rename is used instead.

:func:`replace_file` is for the service's own state records (a user's target class, references), which
are replaced as a whole, atomically.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``dst``."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: the file system has no RENAME_NOREPLACE
        raise OSError(err, os.strerror(err), str(dst))
    os.link(src, dst)  # atomic and never replaces either
    os.unlink(src)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Durably replace ``path`` with ``data`` (state records): temporary file, fsync, rename, fsync folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_new_file(folder: Path, stem: str, extension: str, data: bytes) -> Path:
    """Durably create ``folder/stem[-N]extension`` holding ``data``; returns the path used."""
    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".cloakd-tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for n in range(10_000):
            target = folder / f"{stem}{f'-{n}' if n else ''}{extension}"
            try:
                rename_noreplace(Path(tmp), target)
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                if os.path.lexists(target):
                    continue
                os.rename(tmp, target)
            fsync_dir(folder)
            return target
        raise FileExistsError(errno.EEXIST, f"no free name for {stem}{extension}", str(folder))
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
