"""The format registry: content sniffing (magic bytes, never the file name) to the format's class.

Supported: JPEG, PNG, WebP, HEIF/HEIC, TIFF. Recognised but refused with UnsupportedFormatError (named, so
the user knows what to convert): GIF (still; animated GIF gets AnimatedImageError like every animation),
BMP, ICO, PSD, JPEG 2000, JPEG XL, AVIF, QOI, BigTIFF and camera raw files. GIF and BMP carry little
metadata but are rare as photos; supporting them later is one class each. Anything else is NotAnImageError.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, UnidentifiedImageError

from ..errors import AnimatedImageError, NotAnImageError, UnsupportedFormatError
from .container import ImageFormat
from .heif import Heif, ftyp_brands
from .jpeg import Jpeg
from .png import Png
from .tiff import Tiff
from .tiffdir import TiffReader
from .webp import WebP

FORMATS: tuple[ImageFormat, ...] = (Jpeg(), Png(), WebP(), Heif(), Tiff())
_BY_NAME = {f.name: f for f in FORMATS}


def _is_camera_raw(data: bytes) -> bool:
    """TIFF-based raw files (DNG, CR2, NEF, ARW...): IFD0 is only a preview of the real picture."""
    if data[8:10] == b"CR":
        return True
    try:
        reader = TiffReader(data)
        ifd0 = reader.directory(reader.first_offset)
    except ValueError:
        return False
    subfile = ifd0.entries.get(254)
    reduced = bool(subfile and subfile.ints() and subfile.ints()[0] & 1)
    return reduced or 50706 in ifd0.entries  # NewSubfileType "reduced resolution", or DNGVersion


_UNSUPPORTED: list[tuple[str, Callable[[bytes], bool]]] = [
    ("GIF", lambda d: d[:6] in (b"GIF87a", b"GIF89a")),
    ("BMP", lambda d: d[:2] == b"BM" and len(d) > 14),
    ("ICO", lambda d: d[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")),
    ("PSD", lambda d: d[:4] == b"8BPS"),
    ("JPEG 2000", lambda d: d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or d[:4] == b"\xff\x4f\xff\x51"),
    ("JPEG XL", lambda d: d[:2] == b"\xff\x0a" or d[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n"),
    ("AVIF", lambda d: bool(ftyp_brands(d[:64]) & {b"avif", b"avis"})),
    ("QOI", lambda d: d[:4] == b"qoif"),
    ("BigTIFF", lambda d: d[:4] in (b"II+\x00", b"MM\x00+")),
]


def by_name(name: str) -> ImageFormat:
    return _BY_NAME[name]


def detect(data: bytes, *, label: str = "input") -> ImageFormat:
    """The format class for ``data``; NotAnImageError / UnsupportedFormatError / AnimatedImageError otherwise."""
    if not data:
        raise NotAnImageError(f"{label} is empty (0 bytes): not an image")
    head = data[:64]
    for fmt in FORMATS:
        if fmt.sniff(head):
            if fmt.name == "TIFF" and _is_camera_raw(data):
                raise UnsupportedFormatError(f"{label} is a camera raw file: export it as JPEG or TIFF first")
            return fmt
    for name, matches in _UNSUPPORTED:
        if matches(data):
            if name == "GIF" and _gif_frames(data) > 1:
                raise AnimatedImageError(f"{label} is an animated GIF: cloakd processes still photos only")
            raise UnsupportedFormatError(
                f"{label} is a {name} image, which cloakd does not process: convert it to JPEG or PNG")
    raise NotAnImageError(f"{label} is not an image cloakd recognises (JPEG, PNG, WebP, HEIC/HEIF or TIFF)")


def _gif_frames(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as image:
            return int(getattr(image, "n_frames", 1))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError):
        return 1
