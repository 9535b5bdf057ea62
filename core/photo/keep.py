"""The metadata allow-list: which EXIF tags a user may keep, and the fresh minimal EXIF block that keeps them.

Default: keep nothing. A user may name tags of the main (IFD0) and EXIF directories by their EXIF names,
case-insensitively, e.g. ``DateTimeOriginal``, ``Artist``, ``Copyright``. Never kept, whatever is asked:
the whole GPS directory (location), Orientation (the pixels are already upright), MakerNote, the
thumbnail directory, embedded blobs (XMP, IPTC, Photoshop, ICC, PrintIM, DNG private data) and tags that
describe the source's pixel layout. The block is written from scratch with piexif: only the kept tags,
plus the pointer to the EXIF directory when a tag lives there. A tag absent from the source is not kept.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import piexif

from ..errors import MetadataPolicyError
from .tiff import STRUCTURE_TAGS
from .tiffdir import EXIF_IFD, GPS_IFD, INTEROP_IFD, TiffReader

_NEVER_KEPT = STRUCTURE_TAGS | {
    0x0112,  # Orientation
    0x927C,  # MakerNote
    EXIF_IFD,
    GPS_IFD,
    INTEROP_IFD,
    330,  # directory pointers, SubIFDs
    700,
    33723,
    34377,
    34675,
    50341,  # XMP, IPTC, Photoshop resources, ICC profile, PrintIM
    50740,
    50972,
    50831,
    50833,  # DNG private data, original raw file data, as-shot / current ICC profiles
}
_REFUSED_NAMES = {
    "orientation": "the pixels are already upright",
    "makernote": "it is private camera data",
    "gps": "location is never kept",
}


def _keepable() -> dict[str, tuple[str, int, str]]:
    """lower-case name -> (piexif IFD, tag, EXIF name); EXIF-directory tags win over same-named IFD0 ones."""
    table: dict[str, tuple[str, int, str]] = {}
    for ifd in ("0th", "Exif"):
        for tag, info in piexif.TAGS[ifd].items():
            if tag not in _NEVER_KEPT:
                table[info["name"].lower()] = (ifd, tag, info["name"])
    return table


KEEPABLE = _keepable()


def resolve(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical EXIF names for an allow-list; MetadataPolicyError for unknown or never-kept tags."""
    out: list[str] = []
    for raw in names:
        key = raw.strip().lower()
        if key in KEEPABLE:
            if KEEPABLE[key][2] not in out:
                out.append(KEEPABLE[key][2])
            continue
        reason = next((why for prefix, why in _REFUSED_NAMES.items() if key.startswith(prefix)), None)
        if reason:
            raise MetadataPolicyError(f"tag {raw!r} cannot be kept: {reason}")
        raise MetadataPolicyError(
            f"unknown or never-kept EXIF tag {raw!r} in the keep list "
            f"(use EXIF names such as DateTimeOriginal, Artist, Copyright)"
        )
    return tuple(out)


def minimal_exif(source: bytes | None, keep: Iterable[str]) -> tuple[bytes | None, tuple[str, ...]]:
    """(``Exif\\0\\0`` + TIFF block with only the allow-listed tags found in ``source``, names kept).

    Returns (None, ()) when nothing is to be kept or nothing asked for is present or readable.
    """
    names = resolve(keep)
    if not names or not source:
        return None, ()
    try:
        loaded = piexif.load(source)
    except (ValueError, KeyError, IndexError, TypeError, struct.error):
        return None, ()
    fresh: dict[str, dict[int, object]] = {"0th": {}, "Exif": {}}
    kept = []
    for name in names:
        ifd, tag, _ = KEEPABLE[name.lower()]
        if tag in loaded.get(ifd, {}):
            fresh[ifd][tag] = loaded[ifd][tag]
            kept.append(name)
    if not kept:
        return None, ()
    return piexif.dump(fresh), tuple(kept)


def unexpected_tags(tiff: bytes, kept: Iterable[str], *, structural: frozenset[int] = frozenset()) -> list[str]:
    """Everything in an EXIF/TIFF structure beyond the kept tags (and ``structural`` IFD0 tags for TIFF files).

    Reads the structure with our own reader, so unknown tags, extra directories and thumbnails all count.
    """
    allowed = {"0th": set(structural), "Exif": set()}
    for name in kept:
        ifd, tag, _ = KEEPABLE[name.lower()]
        allowed[ifd].add(tag)
    if allowed["Exif"]:
        allowed["0th"].add(EXIF_IFD)
    try:
        reader = TiffReader(tiff)
        chain = reader.chain()
    except ValueError:
        return ["unreadable EXIF structure"]
    if not chain:
        return ["EXIF structure without a directory"]
    problems = [_tag_name("0th", t) for t in sorted(chain[0].entries) if t not in allowed["0th"]]
    if len(chain) > 1:
        problems.append(f"{len(chain) - 1} further directory (thumbnail IFD1)")
    exif_dir = reader.sub_directory(chain[0], EXIF_IFD) if EXIF_IFD in allowed["0th"] else None
    if exif_dir is not None:
        problems += [_tag_name("Exif", t) for t in sorted(exif_dir.entries) if t not in allowed["Exif"]]
    return problems


def _tag_name(ifd: str, tag: int) -> str:
    info = piexif.TAGS[ifd].get(tag) or piexif.TAGS["0th"].get(tag)
    return info["name"] if info else f"tag 0x{tag:04X}"
