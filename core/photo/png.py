"""PNG: chunk walker, 16-bit sample reader and writer.

Chunks are classified by type; text chunks are looked into because ImageMagick and Photoshop hide EXIF,
XMP, IPTC and ICC data in them ("Raw profile type exif" as hex text, "XML:com.adobe.xmp" as iTXt).

16-bit PNG: Pillow opens 16-bit RGB(A) PNGs as 8-bit by keeping only the high byte of each sample
(truncation, which bands smooth gradients). We read the full samples by decoding the same data a second
time with Pillow's little-endian unpacker, which on big-endian PNG data picks the low bytes; decode.py then
reduces to 8 bits with rounding plus an ordered dither (policy documented there).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

from .container import Block, ImageFormat, Kind, OutputOptions
from .report import CAMERA, DATES, OTHER, PEOPLE, SOFTWARE, Finding

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Critical chunks, transparency, colour rendering hints, physical size, animation control: no free text.
_STRUCTURE = {
    b"IHDR",
    b"PLTE",
    b"IDAT",
    b"IEND",
    b"tRNS",
    b"gAMA",
    b"cHRM",
    b"sRGB",
    b"sBIT",
    b"cICP",
    b"mDCV",
    b"cLLI",
    b"pHYs",
    b"bKGD",
    b"hIST",
    b"sPLT",
    b"acTL",
    b"fcTL",
    b"fdAT",
}
_RAW_PROFILES = {
    "exif": Kind.EXIF,
    "app1": Kind.EXIF,
    "xmp": Kind.XMP,
    "iptc": Kind.IPTC,
    "8bim": Kind.IPTC,
    "icc": Kind.ICC,
    "icm": Kind.ICC,
}
# The PNG specification's predefined text keywords (case-insensitive here); ImageMagick adds "date:*" keys.
_KEYWORDS = {
    "title": PEOPLE,
    "author": PEOPLE,
    "description": PEOPLE,
    "copyright": PEOPLE,
    "comment": PEOPLE,
    "disclaimer": OTHER,
    "warning": OTHER,
    "creation time": DATES,
    "software": SOFTWARE,
    "source": CAMERA,
}
#: the most a compressed chunk (iCCP, zTXt, iTXt) may expand to: ICC profiles and XMP packets are well below
#: 1 MB; 16 MB of one chunk is no metadata but a decompression bomb (Pillow itself stops at 1 MB per chunk)
MAX_INFLATED = 16 * 2**20
# Little-endian rawmodes that, applied to big-endian 16-bit data, yield the low byte of every sample.
_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


class Bomb(Exception):
    """A compressed chunk that expands beyond :data:`MAX_INFLATED` bytes."""


def inflate(data: bytes) -> bytes:
    """zlib-decompress ``data``, at most MAX_INFLATED bytes of it (Bomb beyond): never more memory than that,
    however the data was made (1 MB of zlib can expand to 1 GB)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_INFLATED)
    if inflater.unconsumed_tail:
        raise Bomb
    return out


def _text(ctype: bytes, data: bytes) -> tuple[str, bytes]:
    """(keyword, text bytes) of a tEXt, zTXt or iTXt chunk; undecodable compressed text stays compressed."""
    key, _, rest = data.partition(b"\x00")
    try:
        if ctype == b"zTXt":
            rest = inflate(rest[1:])
        elif ctype == b"iTXt":
            compressed = rest[:1] == b"\x01"
            rest = rest[2:].split(b"\x00", 2)[-1]  # skip language tag and translated keyword
            if compressed:
                rest = inflate(rest)
    except zlib.error:
        pass
    return key.decode("latin-1"), rest


def _raw_profile(text: bytes) -> bytes:
    """ImageMagick's "Raw profile type X": newline, name, length, then hex digits."""
    parts = text.split(b"\n", 3)
    hexdigits = b"".join(parts[3].split()) if len(parts) == 4 else b""
    try:
        body = bytes.fromhex(hexdigits.decode("ascii"))
    except ValueError:
        return b""
    return body[6:] if body.startswith(b"Exif\x00\x00") else body


def _classify(ctype: bytes, data: bytes) -> Block:
    try:
        return _block(ctype, data)
    except Bomb:
        return Block(Kind.BOMB, f"{ctype.decode('latin-1')} chunk expands beyond {MAX_INFLATED // 2**20} MB")


def _block(ctype: bytes, data: bytes) -> Block:
    name = ctype.decode("latin-1")
    if ctype in _STRUCTURE:
        return Block(Kind.STRUCTURE, name)
    if ctype == b"eXIf":
        return Block(Kind.EXIF, "eXIf", data[6:] if data.startswith(b"Exif\x00\x00") else data)
    if ctype == b"iCCP":
        _, _, rest = data.partition(b"\x00")
        try:
            return Block(Kind.ICC, "iCCP", inflate(rest[1:]))
        except zlib.error:
            return Block(Kind.ICC, "iCCP (undecodable)", rest)
    if ctype in (b"tEXt", b"zTXt", b"iTXt"):
        key, text = _text(ctype, data)
        if key == "XML:com.adobe.xmp":
            return Block(Kind.XMP, f"{name} {key}", text)
        if key.lower().startswith("raw profile type "):
            kind = _RAW_PROFILES.get(key[17:].lower(), Kind.UNKNOWN)
            return Block(kind, f"{name} {key}", _raw_profile(text))
        kind = Kind.COMMENT if key.lower() == "comment" else Kind.TEXT
        return Block(kind, f"{name} {key}", text)
    if ctype == b"tIME":
        return Block(Kind.TEXT, "tIME (last modification time)", data)
    return Block(Kind.UNKNOWN, name, data)


def walk(data: bytes) -> list[Block]:
    """All chunks of a PNG, plus anything after IEND. CRCs are not checked (Pillow checks them on decode)."""
    blocks = [Block(Kind.STRUCTURE, "signature")]
    pos = len(SIGNATURE)
    while True:
        if pos + 8 > len(data):
            blocks.append(Block(Kind.DAMAGED, f"file ends at byte {len(data)} before the IEND chunk"))
            break
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            blocks.append(Block(Kind.DAMAGED, f"chunk {ctype!r} at byte {pos} runs past the end of the file"))
            break
        blocks.append(_classify(ctype, data[pos + 8 : pos + 8 + length]))
        pos = end
        if ctype == b"IEND":
            if pos < len(data):
                trailer = data[pos:]
                blocks.append(Block(Kind.TRAILER, f"{len(trailer)} bytes after IEND", trailer))
            break
    return blocks


class Png(ImageFormat):
    name = "PNG"
    pillow_id = "PNG"
    extensions = (".png",)
    warnings_are_damage = True

    def sniff(self, head: bytes) -> bool:
        return head[:8] == SIGNATURE

    def blocks(self, data: bytes) -> list[Block]:
        return walk(data)

    def high_depth_samples(self, image: Image.Image, data: bytes) -> np.ndarray | None:
        """uint16 H x W x C samples of a 16-bit RGB/RGBA/grey+alpha PNG (16-bit grey Pillow reads fully)."""
        rawmode = image.tile[0][3] if image.tile else None
        if rawmode in _LOW_BYTES:
            high = np.asarray(image, dtype=np.uint16)
            low = np.asarray(_decode_as(data, _LOW_BYTES[rawmode]), dtype=np.uint16)
            return (high << 8) | low
        if rawmode == "LA;16B":
            # Pillow turns 16-bit grey+alpha into 8-bit RGBA; read the same 32-bit pixels as raw bytes instead.
            raw = np.asarray(_decode_as(data, "RGBA"), dtype=np.uint16)
            return np.stack([raw[..., 0] << 8 | raw[..., 1], raw[..., 2] << 8 | raw[..., 3]], axis=-1)
        return None

    def text_topic(self, key: str) -> str:
        return _KEYWORDS.get(key.lower(), DATES if key.lower().startswith("date:") else OTHER)

    def text_finding(self, block: Block) -> Finding:
        if block.name.startswith("tIME") and len(block.payload) == 7:
            year, month, day, hour, minute, second = struct.unpack(">HBBBBB", block.payload)
            return Finding(
                DATES, "last modified", f"{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}", block.name
            )
        return super().text_finding(block)

    def save_options(self, *, lossless: bool, options: OutputOptions) -> dict[str, Any]:
        return {}  # a fresh image has no text, ICC or EXIF in its info: Pillow writes IHDR, IDAT, IEND only


def _decode_as(data: bytes, rawmode: str) -> Image.Image:
    """Decode a PNG's pixel data again with another unpacker of the same bits per pixel."""
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.tile = [(t[0], t[1], t[2], rawmode) for t in image.tile]
    image.load()
    return image
