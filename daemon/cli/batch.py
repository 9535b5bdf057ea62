"""A batch of photos for ``protect`` and ``strip``: files and folders in, one summary line out.

A file named on the command line is always taken (its content decides whether it is a photo, where it is
read). A folder gives the photos in it, recognised by content (core/photo/discover.py); ``--recursive``
also those of its sub-folders. A folder is never left through a symbolic link, and the output folder is
never read, even when it lies inside the folder.

Where the copies go: a named file's copy goes straight into ``--out``; a photo found in a folder keeps its
path below that folder, so ``cloakd protect trip/ --recursive --out ready`` writes ``trip/day1/a.jpg`` to
``ready/day1/a.jpg`` (the folder's own name is not repeated). A name that is taken gets -1, -2, ...
(daemon/files.py), never an overwrite.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cloakd.core.errors import CloakdError
from cloakd.core.photo.discover import find_photos

from ..words import count
from .exits import fail
from .options import output_folder


def add_inputs(p: argparse.ArgumentParser, dest: str, what: str) -> None:
    """The positional PHOTO_OR_FOLDER... and ``--recursive``."""
    p.add_argument(
        dest,
        nargs="+",
        type=Path,
        metavar="PHOTO_OR_FOLDER",
        help=f"{what}; a folder gives the photos in it (recognised by content, not by name)",
    )
    p.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="also take the photos in the folders' sub-folders (the copies keep their paths below the folder)",
    )


@dataclass(frozen=True)
class Item:
    """One photo of the batch and the folder its copy goes into."""

    path: Path
    out: Path


def items(paths: list[Path], out: Path, recursive: bool) -> tuple[list[Item], int]:
    """The batch's photos, in the order given (a folder's sorted), and how many named folders failed (each
    said on stderr; they are not photos, so the summary line does not count them)."""
    batch, failed = [], 0
    for path in paths:
        if not path.is_dir():
            batch.append(Item(path, out))  # read (and failing, if it must) in the main loop
            continue
        try:
            batch += _folder(path, out, recursive)
        except CloakdError as e:
            failed += 1
            fail(path, e)
    return batch, failed


def _folder(folder: Path, out: Path, recursive: bool) -> list[Item]:
    if out.resolve() == folder.resolve():
        raise CloakdError(
            f"--out {out} is the folder of photos to read: choose another one (a sub-folder of it is fine)"
        )
    found = find_photos(folder, recursive=recursive, skip=out)
    for path, why in found.skipped:
        print(f"cloakd: skipping {path}: {why}", file=sys.stderr)
    if not found.photos:
        hint = "" if recursive else " (--recursive also looks in its sub-folders)"
        raise CloakdError(f"{folder}: no photo in this folder{hint}")
    return [Item(p, out / p.parent.relative_to(folder)) for p in found.photos]


def folder_for(item: Item) -> Path:
    """The item's output folder, created if missing (``--out`` itself exists already)."""
    return output_folder(item.out)


@dataclass
class Summary:
    """The one line that ends a batch: how many photos, each outcome's count, and the time taken."""

    outcomes: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)
    start: float = field(default_factory=time.monotonic)

    def add(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + n

    def line(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{self.counts.get(o, 0)} {o}" for o in self.outcomes)
        return f"{count(total, 'photo')}: {parts}, {time.monotonic() - self.start:.1f} s"
