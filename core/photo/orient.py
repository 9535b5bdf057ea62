"""EXIF orientation: turn stored pixels into the picture as displayed.

The tag says how the stored rows and columns map to the display (TIFF 6.0 / EXIF 2.3, tag 0x0112):
1 as stored, 2 mirrored left-right, 3 rotated 180, 4 mirrored top-bottom, 5 transposed (mirror + 270 CW),
6 needs 90 CW, 7 transversed (mirror + 90 CW), 8 needs 90 CCW. Values outside 1-8 are treated as 1, as
browsers do. Works on H x W and H x W x C arrays alike (pixels and alpha get the same treatment).
"""

from __future__ import annotations

import numpy as np

from .tiffdir import TiffReader

ORIENTATION_TAG = 0x0112


def orientation_of(exif: bytes | None) -> int:
    """The Orientation value of IFD0 of an EXIF/TIFF structure; 1 if absent or unreadable."""
    if not exif:
        return 1
    try:
        reader = TiffReader(exif)
        entry = reader.directory(reader.first_offset).entries.get(ORIENTATION_TAG)
    except ValueError:
        return 1
    value = entry.ints()[0] if entry is not None and entry.ints() else 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """``a`` as displayed, as a C-contiguous array (a copy unless orientation is 1)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = a[::-1].swapaxes(0, 1)
    elif orientation == 7:
        a = a[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        a = a[:, ::-1].swapaxes(0, 1)
    return np.ascontiguousarray(a)
