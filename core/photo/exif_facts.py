"""Read what an EXIF block (or a TIFF file's own tags) says about the photo, its place, camera and people.

Maker notes are private per-maker directories; where their layout is public and simple (Canon, Nikon
type 3, Panasonic, Fujifilm) the owner name and serial numbers are read from them too. JPEG data inside a
maker note (previews, e.g. Casio's) is reported as well.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image

from .report import CAMERA, DATES, LOCATION, OTHER, PEOPLE, PREVIEWS, SOFTWARE, Finding
from .tiffdir import EXIF_IFD, GPS_IFD, Directory, Entry, TiffReader

# (directory, tag) -> (topic, what)
_TEXT_TAGS: dict[tuple[str, int], tuple[str, str]] = {
    ("0th", 0x010E): (PEOPLE, "description"),
    ("0th", 0x013B): (PEOPLE, "artist"),
    ("0th", 0x8298): (PEOPLE, "copyright"),
    ("0th", 0x010D): (PEOPLE, "document name"),
    ("0th", 0x0131): (SOFTWARE, "software"),
    ("0th", 0x013C): (CAMERA, "device name"),
    ("0th", 0x0132): (DATES, "modified"),
    ("Exif", 0x9003): (DATES, "taken"),
    ("Exif", 0x9004): (DATES, "digitised"),
    ("Exif", 0x9011): (DATES, "time zone when taken"),
    ("Exif", 0xA430): (CAMERA, "camera owner"),
    ("Exif", 0xA431): (CAMERA, "camera body serial number"),
    ("Exif", 0xA435): (CAMERA, "lens serial number"),
    ("Exif", 0xA420): (CAMERA, "unique image ID"),
    ("Exif", 0xA434): (CAMERA, "lens"),
}
_XP_TAGS = {0x9C9B: "title", 0x9C9C: "comment", 0x9C9D: "author", 0x9C9E: "keywords", 0x9C9F: "subject"}
_USER_COMMENT = 0x9286
_MAKER_NOTE = 0x927C


def exif_findings(tiff: bytes, source: str = "EXIF") -> list[Finding]:
    """Findings from an EXIF/TIFF structure (one "unreadable" finding if it has no valid header)."""
    try:
        reader = TiffReader(tiff)
        chain = reader.chain()
    except ValueError:
        return [Finding(OTHER, "EXIF block", "present but unreadable", source)]
    if not chain:
        return []
    ifd0 = chain[0]
    exif = reader.sub_directory(ifd0, EXIF_IFD)
    gps = reader.sub_directory(ifd0, GPS_IFD)
    dirs = {"0th": ifd0, "Exif": exif}
    out: list[Finding] = []

    def add(topic: str, what: str, value: str, where: str = "") -> None:
        if value and value.strip(" \x00"):
            out.append(Finding(topic, what, value.strip(), f"{source} {where}".strip()))

    make = _text(ifd0, 0x010F)
    add(CAMERA, "camera", " ".join(v for v in (make, _text(ifd0, 0x0110)) if v), "Make/Model")
    for (d, tag), (topic, what) in _TEXT_TAGS.items():
        if dirs[d] is not None:
            add(topic, what, _text(dirs[d], tag))
    for tag, what in _XP_TAGS.items():
        entry = ifd0.entries.get(tag)
        if entry is not None:
            add(PEOPLE, f"Windows {what}", entry.raw.decode("utf-16-le", "replace").rstrip("\x00"))
    if exif is not None:
        add(PEOPLE, "user comment", _user_comment(exif.entries.get(_USER_COMMENT)))
        note = exif.entries.get(_MAKER_NOTE)
        if note is not None and note.raw:
            for topic, what, value in _maker_note(reader, note, make):
                add(topic, what, value, "MakerNote")
    if gps is not None:
        out += _gps(gps, source)
    if len(chain) > 1:
        out.append(_thumbnail(reader, chain[1], source))
    return out


def _maker_note(reader: TiffReader, note: Entry, make: str) -> list[tuple[str, str, str]]:
    """What a maker note tells, as (topic, what, value): that it is there, the serial numbers in it, and the
    previews it hides."""
    out = [(CAMERA, "maker note", f"{make or 'camera maker'} private data, {len(note.raw)} bytes")]
    out += [(CAMERA, what, value) for what, value in _maker_serials(reader, note, make)]
    previews = note.raw.count(b"\xff\xd8\xff")
    if previews:
        out.append((PREVIEWS, "preview image in the maker note", f"{previews} JPEG stream(s)"))
    return out


def _text(directory: Directory | None, tag: int) -> str:
    entry = directory.entries.get(tag) if directory is not None else None
    if entry is None:
        return ""
    return entry.text() if entry.type in (1, 2, 7) else " ".join(str(v) for v in entry.ints())


def _user_comment(entry: Entry | None) -> str:
    """UserComment: 8-byte character code, then text (ASCII, UCS-2 in the file's byte order, or JIS)."""
    if entry is None or len(entry.raw) <= 8:
        return ""
    code, body = entry.raw[:8], entry.raw[8:]
    if code.startswith(b"UNICODE"):
        return body.decode("utf-16-le" if entry.order == "<" else "utf-16-be", "replace").strip("\x00 ")
    return body.decode("utf-8", "replace").strip("\x00 ")


def _gps(gps: Directory, source: str) -> list[Finding]:
    out = []
    lat, lon = _coordinate(gps, 2, 1), _coordinate(gps, 4, 3)
    if lat is not None and lon is not None:
        value = f"{abs(lat):.6f} {'S' if lat < 0 else 'N'}, {abs(lon):.6f} {'W' if lon < 0 else 'E'}"
        out.append(Finding(LOCATION, "GPS position", value, f"{source} GPS"))
    altitude = gps.entries.get(6)
    if altitude is not None and altitude.fractions():
        below_sea = 5 in gps.entries and gps.entries[5].ints()[:1] == (1,)  # GPSAltitudeRef 1: below sea level
        metres = float(altitude.fractions()[0]) * (-1 if below_sea else 1)
        out.append(Finding(LOCATION, "GPS altitude", f"{metres:.1f} m", f"{source} GPS"))
    date = gps.entries.get(29)
    if date is not None and date.text():
        out.append(Finding(DATES, "GPS date", date.text(), f"{source} GPS"))
    if not out and gps.entries:
        out.append(Finding(LOCATION, "GPS directory", f"{len(gps.entries)} tags, no position", f"{source} GPS"))
    return out


def _coordinate(gps: Directory, value_tag: int, ref_tag: int) -> float | None:
    entry = gps.entries.get(value_tag)
    parts = entry.fractions() if entry is not None else ()
    if len(parts) < 3:
        return None
    degrees = float(parts[0] + parts[1] / 60 + parts[2] / 3600)
    ref = gps.entries[ref_tag].text().upper() if ref_tag in gps.entries else ""
    return -degrees if ref in ("S", "W") else degrees


def _thumbnail(reader: TiffReader, ifd1: Directory, source: str) -> Finding:
    """The IFD1 thumbnail (a JPEG when JPEGInterchangeFormat/Length are set)."""
    start_entry, length_entry = ifd1.entries.get(0x0201), ifd1.entries.get(0x0202)
    start = start_entry.ints()[0] if start_entry is not None and start_entry.ints() else 0
    length = length_entry.ints()[0] if length_entry is not None and length_entry.ints() else 0
    if not length:
        return Finding(PREVIEWS, "thumbnail directory", "IFD1 present", f"{source} IFD1")
    size = _jpeg_size(bytes(reader.data[start : start + length]))
    return Finding(PREVIEWS, "thumbnail", f"JPEG, {size}{length} bytes", f"{source} IFD1")


def _jpeg_size(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            return f"{image.size[0]} x {image.size[1]} pixels, "
    except (OSError, ValueError, SyntaxError):
        return ""


def _maker_serials(reader: TiffReader, note: Entry, make: str) -> list[tuple[str, str]]:
    """(what, value) pairs read from the maker note of the few makers whose layout is simple and public."""
    raw = note.raw
    maker = make.lower()
    layouts: list[tuple[bool, Callable[[], tuple[TiffReader, int]], dict[int, str]]] = [
        (
            maker.startswith("canon"),
            lambda: (reader, note.offset),
            {0x0009: "camera owner", 0x000C: "camera serial number", 0x0096: "internal serial number"},
        ),
        (
            raw.startswith(b"Nikon\x00\x02"),
            lambda: _nikon(raw),
            {0x001D: "camera serial number", 0x00A0: "camera serial number"},
        ),
        (
            raw.startswith(b"Panasonic\x00"),
            lambda: (reader, note.offset + 12),
            {0x0025: "internal serial number", 0x0052: "lens serial number"},
        ),
        (
            raw.startswith(b"FUJIFILM"),
            lambda: (TiffReader(raw, order="<"), int.from_bytes(raw[8:12], "little")),
            {0x0010: "internal serial number"},
        ),
    ]
    for applies, locate, tags in layouts:
        if not applies:
            continue
        try:
            sub_reader, offset = locate()
            directory = sub_reader.directory(offset)
        except ValueError:
            return []
        return [(what, value) for tag, what in tags.items() if (value := _text(directory, tag))]
    return []


def _nikon(raw: bytes) -> tuple[TiffReader, int]:
    reader = TiffReader(raw, start=10)  # "Nikon\0" + version, then a TIFF header of its own
    return reader, reader.first_offset
