"""Which files are offered as photos when the user names a folder.

``photo_files`` (``cloakd enrol``, ``target``, ``targets build``, and ``evaluate`` with its Sybil candidates):
extensions are a first filter there, so that a folder of documents is not read file by file; each format
class declares its own (``ImageFormat.extensions``), and a file that is not a photo gets its one-line error
where it is read.

``find_photos`` (``cloakd protect`` and ``strip``): a photo is recognised by its content (its first bytes,
formats.py), never by its name; a folder's own files only, or with ``recursive`` every sub-folder's too. It
never leaves the folder it is given: a symbolic link to a file outside it is skipped (with the reason), a
link to a folder is not descended, and a folder to ``skip`` (the output folder, when it lies inside) is not
read. A file named on its own is always offered, whatever its name or content.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CloakdError
from .formats import PHOTO_EXTENSIONS, looks_like_image

#: bytes read from each file of a folder to recognise a photo
_HEAD = 64


def photo_files(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else the files below the folder ``path`` with a photo's extension (in
    sorted order). CloakdError when ``path`` is neither."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CloakdError(f"{path}: no such file or folder")
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())


@dataclass
class Found:
    """The photos of a folder (sorted) and the files left out of it with their reasons."""

    photos: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _is_photo(path: Path) -> bool:
    """Whether the file's content is an image's. A file that cannot be opened is offered, so that reading
    it fails with its own reason rather than the file silently missing."""
    try:
        with open(path, "rb") as f:
            return looks_like_image(f.read(_HEAD))
    except OSError:
        return True


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def find_photos(folder: Path, *, recursive: bool = False, skip: Path | None = None) -> Found:
    """The photos in ``folder`` by content; with ``recursive``, in its sub-folders too. Links never lead out of
    ``folder``, folder links are not followed, and nothing inside ``skip`` is read. CloakdError when
    ``folder`` is not a folder."""
    if not folder.is_dir():
        raise CloakdError(f"{folder}: no such folder")
    root = folder.resolve()
    avoid = skip.resolve() if skip is not None else None
    found = Found()
    for here, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if recursive and not _avoided(Path(here, d), avoid))
        for name in sorted(files):
            path = Path(here, name)
            why = _leaves(path, root, avoid)
            if why:
                found.skipped.append((path, why))
            elif path.is_file() and _is_photo(path):
                found.photos.append(path)
    return found


def _avoided(path: Path, avoid: Path | None) -> bool:
    """A sub-folder not to descend: a link (never followed) or the folder to skip."""
    return path.is_symlink() or (avoid is not None and _within(path.resolve(), avoid))


def _leaves(path: Path, root: Path, avoid: Path | None) -> str:
    """Why a file of the folder is not read ("" when it is): a link to outside the folder, or into the
    folder to skip."""
    if not path.is_symlink():
        return ""
    target = path.resolve()
    if not _within(target, root):
        return f"a link to {target}, outside {root}: links are not followed out of the folder"
    if avoid is not None and _within(target, avoid):
        return f"a link into the output folder {avoid}"
    return ""
