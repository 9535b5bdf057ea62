"""Read TIFF image file directories (IFDs): the structure under EXIF blocks, TIFF files and most maker notes.

This is our own small reader rather than Pillow's or piexif's because both jobs that use it need to see
*every* entry as written: verification must notice tags no library knows (fail closed), and inspection must
reach maker-note directories that those libraries skip. It is tolerant: an entry whose value points outside
the buffer is still listed (its presence matters) with empty ``raw`` bytes, and directory loops are cut.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction

# Bytes per value for each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT,
# SLONG, SRATIONAL, FLOAT, DOUBLE, IFD).
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_INT_FORMAT = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I"}
_MAX_ENTRIES = 4096
_MAX_CHAIN = 64

# Tags that point at sub-directories, by the name EXIF gives them.
EXIF_IFD = 0x8769
GPS_IFD = 0x8825
INTEROP_IFD = 0xA005


@dataclass(frozen=True)
class Entry:
    """One directory entry: tag, field type, value count and the value's bytes (empty if unreadable)."""

    tag: int
    type: int
    count: int
    raw: bytes
    order: str  # struct byte order: "<" or ">"
    offset: int  # where ``raw`` starts, relative to the TIFF header

    def ints(self) -> tuple[int, ...]:
        fmt = _INT_FORMAT.get(self.type)
        if fmt is None or not self.raw:
            return ()
        return struct.unpack(f"{self.order}{len(self.raw) // struct.calcsize(fmt)}{fmt}", self.raw)

    def fractions(self) -> tuple[Fraction, ...]:
        if self.type not in (5, 10) or not self.raw:
            return ()
        fmt = "I" if self.type == 5 else "i"
        nums = struct.unpack(f"{self.order}{len(self.raw) // 4}{fmt}", self.raw)
        return tuple(Fraction(n, d) for n, d in zip(nums[::2], nums[1::2]) if d)

    def text(self) -> str:
        """ASCII/UNDEFINED/BYTE value as text: ASCII ends at its first NUL, padding dropped, bad bytes replaced."""
        raw = self.raw.split(b"\x00")[0] if self.type == 2 else self.raw.strip(b"\x00")
        return raw.decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class Directory:
    entries: dict[int, Entry]
    next_offset: int  # 0 when this is the last directory of its chain


class TiffReader:
    """Directories of one TIFF structure starting at ``data[start:]`` (offsets relative to ``start``).

    ``order`` forces the byte order for headerless structures (some maker notes); otherwise the
    ``II*\\0`` / ``MM\\0*`` header decides.
    """

    def __init__(self, data: bytes, *, start: int = 0, order: str | None = None) -> None:
        self.data = memoryview(data)[start:]
        if order is None:
            head = bytes(self.data[:4])
            if head == b"II*\x00":
                order = "<"
            elif head == b"MM\x00*":
                order = ">"
            else:
                raise ValueError("not a TIFF structure (no II*/MM* header)")
        self.order = order

    @property
    def first_offset(self) -> int:
        return self._unpack("I", 4)[0]

    def _unpack(self, fmt: str, offset: int) -> tuple:
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self.data):
            raise ValueError(f"TIFF structure ends before offset {offset + size}")
        return struct.unpack(self.order + fmt, self.data[offset : offset + size])

    def directory(self, offset: int) -> Directory:
        """The directory at ``offset``; ValueError if even its entry count is out of bounds."""
        (count,) = self._unpack("H", offset)
        entries: dict[int, Entry] = {}
        for i in range(min(count, _MAX_ENTRIES)):
            pos = offset + 2 + 12 * i
            if pos + 12 > len(self.data):
                break
            tag, typ, n = self._unpack("HHI", pos)
            size = _TYPE_SIZE.get(typ, 0) * n
            value_at = pos + 8 if size <= 4 else self._unpack("I", pos + 8)[0]
            raw = bytes(self.data[value_at : value_at + size]) if value_at + size <= len(self.data) else b""
            entries.setdefault(tag, Entry(tag, typ, n, raw, self.order, value_at))
        end = offset + 2 + 12 * min(count, _MAX_ENTRIES)
        next_offset = self._unpack("I", end)[0] if end + 4 <= len(self.data) else 0
        return Directory(entries, next_offset)

    def chain(self) -> list[Directory]:
        """IFD0, IFD1, ... following next-directory links (loops and runaway chains are cut)."""
        out: list[Directory] = []
        seen: set[int] = set()
        offset = self.first_offset
        while offset and offset not in seen and len(out) < _MAX_CHAIN:
            seen.add(offset)
            try:
                ifd = self.directory(offset)
            except ValueError:
                break
            out.append(ifd)
            offset = ifd.next_offset
        return out

    def sub_directory(self, parent: Directory, tag: int) -> Directory | None:
        """The directory a pointer tag (EXIF, GPS, Interop) refers to, if present and readable."""
        entry = parent.entries.get(tag)
        if entry is None or not entry.ints():
            return None
        try:
            return self.directory(entry.ints()[0])
        except ValueError:
            return None
