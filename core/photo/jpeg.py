"""JPEG: segment walker and writer.

The walker reads the marker segments from SOI to EOI, skips entropy-coded scan data, and reports what
follows EOI (MPF secondary images and maker "trailer" previews live there). APPn segments are named by
their signature; an APPn we do not know is UNKNOWN, so verification fails closed on anything new.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from PIL import Image

from .container import Block, ImageFormat, Kind, OutputOptions

_SOI = b"\xff\xd8"
# Next marker inside scan data: 0xFF not followed by a stuffed 0x00, a restart marker or fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Segments that make up the picture itself (frame, tables, scan, restart interval, hierarchical).
_STRUCTURE = {
    0xC0,
    0xC1,
    0xC2,
    0xC3,
    0xC5,
    0xC6,
    0xC7,
    0xC9,
    0xCA,
    0xCB,
    0xCD,
    0xCE,
    0xCF,
    0xC4,
    0xCC,
    0xDB,
    0xDD,
    0xDC,
    0xDE,
    0xDF,
}
#: marker, signature, kind, name, and the header bytes after the signature that are not the payload
_APP_SIGNATURES: list[tuple[int, bytes, Kind, str, int]] = [
    (0xE1, b"Exif\x00", Kind.EXIF, "APP1 Exif", 1),  # a pad byte (normally \0)
    (0xE1, b"http://ns.adobe.com/xap/1.0/\x00", Kind.XMP, "APP1 XMP", 0),
    (0xE1, b"http://ns.adobe.com/xmp/extension/\x00", Kind.XMP, "APP1 extended XMP", 40),  # GUID, length, offset
    (0xE2, b"ICC_PROFILE\x00", Kind.ICC, "APP2 ICC_PROFILE", 0),
    (0xE2, b"MPF\x00", Kind.PREVIEW, "APP2 MPF (multi-picture index)", 0),
    (0xE2, b"FPXR\x00", Kind.PREVIEW, "APP2 FlashPix (FPXR) preview", 0),
    (0xED, b"Photoshop 3.0\x00", Kind.IPTC, "APP13 Photoshop/IPTC", 0),
    (0xE0, b"JFXX\x00", Kind.PREVIEW, "APP0 JFXX thumbnail", 0),
]


def _app_block(marker: int, payload: bytes) -> Block:
    if marker == 0xE0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14:
        # JFIF: version and pixel density; bytes 12-13 are the size of an optional embedded thumbnail.
        has_thumb = payload[12] or payload[13]
        return Block(Kind.PREVIEW if has_thumb else Kind.STRUCTURE, "APP0 JFIF", payload[14:] if has_thumb else b"")
    if marker == 0xEE and payload.startswith(b"Adobe") and len(payload) == 12:
        return Block(Kind.STRUCTURE, "APP14 Adobe (colour transform)")  # fixed 12 bytes: decoding flags only
    for m, sig, kind, name, header in _APP_SIGNATURES:
        if marker == m and payload.startswith(sig):
            return Block(kind, name, payload[len(sig) + header :])
    label = payload[:16].split(b"\x00")[0].decode("latin-1", "replace")
    return Block(Kind.UNKNOWN, f"APP{marker - 0xE0} {label!r}", payload)


def _merge_icc(blocks: list[Block]) -> list[Block]:
    """ICC profiles larger than a segment are split over APP2 chunks (seq no, count): join them in order."""
    chunks = [b for b in blocks if b.kind is Kind.ICC]
    if len(chunks) <= 1:
        return [b if b.kind is not Kind.ICC else Block(Kind.ICC, b.name, b.payload[2:]) for b in blocks]
    profile = b"".join(c.payload[2:] for c in sorted(chunks, key=lambda c: c.payload[:1]))
    first = blocks.index(chunks[0])
    rest = [b for b in blocks if b.kind is not Kind.ICC]
    rest.insert(first, Block(Kind.ICC, f"APP2 ICC_PROFILE ({len(chunks)} chunks)", profile))
    return rest


def walk(data: bytes) -> list[Block]:
    """All segments of a JPEG, plus anything after EOI."""
    blocks = [Block(Kind.STRUCTURE, "SOI")]
    pos: int | None = 2
    while pos is not None:
        found, pos = _segment(data, pos)
        blocks += found
    return _merge_icc(blocks)


def _segment(data: bytes, pos: int) -> tuple[list[Block], int | None]:
    """The blocks of the segment (or stray bytes) at ``pos``, and where the next one starts (None: the walk
    ends: end of image, or damage)."""
    n = len(data)
    while pos + 1 < n and data[pos] == 0xFF and data[pos + 1] == 0xFF:
        pos += 1  # fill bytes before a marker
    if pos + 2 > n:
        return [Block(Kind.DAMAGED, f"file ends at byte {n} before the end-of-image marker")], None
    if data[pos] != 0xFF:
        # Junk between segments: decoders skip to the next marker (libjpeg warns), so do we, but the
        # bytes are reported, since they can carry anything.
        nxt = data.find(b"\xff", pos)
        nxt = n if nxt < 0 else nxt
        return [Block(Kind.UNKNOWN, f"{nxt - pos} stray bytes at byte {pos}", data[pos:nxt])], nxt
    marker = data[pos + 1]
    if marker == 0xD9:  # EOI
        return [Block(Kind.STRUCTURE, "EOI")] + _after_end(data[pos + 2 :]), None
    if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn / TEM: no length
        return [], pos + 2
    if pos + 4 > n:
        return [Block(Kind.DAMAGED, f"segment header cut at byte {pos}")], None
    (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
    end = pos + 2 + length
    if length < 2 or end > n:
        return [Block(Kind.DAMAGED, f"segment 0x{marker:02X} at byte {pos} runs past the end of the file")], None
    if marker == 0xDA:  # SOS: header, then entropy-coded data up to the next real marker
        found = _NEXT_MARKER.search(data, end)
        if found is None:
            return [
                Block(Kind.STRUCTURE, "SOS"),
                Block(Kind.DAMAGED, "scan data runs to the end of the file (no end-of-image marker)"),
            ], None
        return [Block(Kind.STRUCTURE, "SOS")], found.start()
    return [_marker_block(marker, data[pos + 4 : end])], end


def _after_end(trailer: bytes) -> list[Block]:
    """What follows EOI: nothing, another JPEG (MPF images, maker previews) or other data."""
    if not trailer:
        return []
    kind = Kind.PREVIEW if b"\xff\xd8\xff" in trailer else Kind.TRAILER
    return [Block(kind, f"{len(trailer)} bytes after end of image", trailer)]


def _marker_block(marker: int, payload: bytes) -> Block:
    """A segment with a length other than a scan."""
    if 0xE0 <= marker <= 0xEF:
        return _app_block(marker, payload)
    if marker == 0xFE:
        return Block(Kind.COMMENT, "COM", payload)
    if marker in _STRUCTURE:
        return Block(Kind.STRUCTURE, f"0x{marker:02X}")
    return Block(Kind.UNKNOWN, f"marker 0x{marker:02X}", payload)


class Jpeg(ImageFormat):
    name = "JPEG"
    pillow_id = "JPEG"
    extensions = (".jpg", ".jpeg")
    has_alpha = False

    def sniff(self, head: bytes) -> bool:
        return head[:3] == b"\xff\xd8\xff"

    def blocks(self, data: bytes) -> list[Block]:
        return walk(data)

    def frame_count(self, image: Image.Image, blocks: list[Block]) -> int:
        # MPF secondary images (depth maps, gain maps, previews) are not frames of the photo: we process
        # the primary image and drop the rest, which is what stripping wants anyway.
        return 1

    def is_lossless(self, blocks: list[Block]) -> bool:
        return False

    def save_options(self, *, lossless: bool, options: OutputOptions) -> dict[str, Any]:
        # subsampling=0 is 4:4:4 (full chroma resolution). Pillow writes only a JFIF APP0 for a fresh image;
        # it would copy a source "comment" from image.info, but our images are built from arrays.
        return {"quality": options.jpeg_quality, "subsampling": 0}
