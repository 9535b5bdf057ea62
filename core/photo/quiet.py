"""Pillow's warnings about the bytes it reads, kept off stderr and turned into cloakd's own decisions.

Pillow reports some damage with ``warnings.warn`` instead of an exception: an EXIF directory whose tags
point past the file ("Tag data larger than file", "Possibly corrupt EXIF data", "Truncated File Read"
while reading a tag, "Corrupt EXIF data"), a malformed MPO index, an invalid APNG control chunk. Python
prints those to stderr, where the service's journal would collect them by the thousand, in Pillow's words
and without the file's name. Every Pillow call that reads a file (its header, its pixels) goes through
:func:`pillow_quietly`, which hands back what Pillow said instead of printing it; decode.py decides what it
means (ImageFormat.warnings_are_damage): a damaged file (TIFF directory, APNG control), or metadata that
Pillow read for itself and that cloakd reads on its own and never writes (a JPEG's EXIF, which Pillow
parses for the DPI, and its MPO index), which is one debug log line. Warnings raised by other code in the
meantime are passed on unchanged.

``warnings.catch_warnings`` changes process-wide state, so calls are serialised by a lock: the service's
workers decode one photo at a time (tens of milliseconds for a phone photo, about a second at the 100 MP
limit), while everything else (faces, cloak, encoding) runs side by side.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_LOCK = threading.RLock()  # re-entrant: a call may itself go through pillow_quietly
_PILLOW = Path(__import__("PIL").__file__).parent


def pillow_quietly(call: Callable[[], T]) -> tuple[T, list[str]]:
    """``call()``'s result and the warnings Pillow issued during it, as one-line texts (not printed).

    An exception of ``call`` propagates as is (the warnings before it are dropped: the error says more).
    """
    with _LOCK:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = call()
    said: list[str] = []
    for w in caught:
        if _PILLOW in Path(w.filename).parents:
            text = " ".join(str(w.message).split())
            if text not in said:
                said.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return result, said
