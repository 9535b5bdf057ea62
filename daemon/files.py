"""Writing result files safely: complete or absent, never over an existing file.

The bytes go to a hidden temporary file in the destination folder (sync clients ignore dot-files), are
fsynced, and are then hard-linked to the first free name ``stem.ext``, ``stem-1.ext``, ... (a link fails
instead of replacing, so a concurrent writer can never be overwritten); the folder is fsynced last. On file
systems without hard links (FAT, some network shares) a checked rename is used instead.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
                os.link(tmp, target)
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                if target.exists() or target.is_symlink():
                    continue
                os.rename(tmp, target)
            fsync_dir(folder)
            return target
        raise FileExistsError(errno.EEXIST, f"no free name for {stem}{extension}", str(folder))
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
