"""Which files are offered as photos when the user names a folder (``cloakd enrol``, ``target``, ``targets
build``, and ``evaluate`` with its Sybil candidates).

A photo is recognised by its content, never by its name (formats.py sniffs the first bytes when it is
decoded): a file that is not a photo gets its one-line error where it is read. Extensions are only a first
filter, for the files of a folder, so that a folder of documents is not read file by file; each format class
declares its own (``ImageFormat.extensions``). A file named on its own is always offered, whatever its name.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CloakdError
from .formats import PHOTO_EXTENSIONS


def photo_files(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else the files below the folder ``path`` with a photo's extension (in
    sorted order). CloakdError when ``path`` is neither."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CloakdError(f"{path}: no such file or folder")
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())
