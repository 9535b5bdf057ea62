"""The format registry: content sniffing (magic bytes, never the file name) to the format's class.

Supported: JPEG, PNG, WebP, HEIF/HEIC, TIFF. Recognised but refused with UnsupportedFormatError (named, so
the user knows what to convert): GIF (still; animated GIF gets AnimatedImageError like every animation),
BMP, ICO, PSD, JPEG 2000, JPEG XL, AVIF, QOI, BigTIFF and camera raw files. GIF and BMP carry little
metadata but are rare as photos; supporting them later is one class each. Anything else is NotAnImageError.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..errors import AnimatedImageError, NotAnImageError, UnsupportedFormatError
from .container import ImageFormat
from .heif import Heif, ftyp_brands
from .jpeg import Jpeg
from .png import Png
from .tiff import Tiff
from .webp import WebP

FORMATS: tuple[ImageFormat, ...] = (Jpeg(), Png(), WebP(), Heif(), Tiff())
_BY_NAME = {f.name: f for f in FORMATS}
#: the usual file name extensions of the supported formats (lower case): a first filter only (discover.py)
PHOTO_EXTENSIONS = frozenset(e for f in FORMATS for e in f.extensions)


@dataclass(frozen=True)
class Unsupported:
    """A format cloakd recognises and refuses, by name: its signature, and (GIF) how many frames a file has,
    since an animation is refused as one whatever its format."""

    name: str
    matches: Callable[[bytes], bool]
    frames: Callable[[bytes], int] | None = None


def _gif_frames(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as image:
            return int(getattr(image, "n_frames", 1))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError):
        return 1


_UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("GIF", lambda d: d[:6] in (b"GIF87a", b"GIF89a"), _gif_frames),
    Unsupported("BMP", lambda d: d[:2] == b"BM" and len(d) > 14),
    Unsupported("ICO", lambda d: d[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")),
    Unsupported("PSD", lambda d: d[:4] == b"8BPS"),
    Unsupported("JPEG 2000", lambda d: d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or d[:4] == b"\xff\x4f\xff\x51"),
    Unsupported("JPEG XL", lambda d: d[:2] == b"\xff\x0a" or d[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n"),
    Unsupported("AVIF", lambda d: bool(ftyp_brands(d[:64]) & {b"avif", b"avis"})),
    Unsupported("QOI", lambda d: d[:4] == b"qoif"),
    Unsupported("BigTIFF", lambda d: d[:4] in (b"II+\x00", b"MM\x00+")),
)


def looks_like_image(head: bytes) -> bool:
    """Whether a file's first bytes (64 are enough) are the signature of an image format cloakd knows: one it
    processes or one it refuses by name (so that a refused photo in a folder gets its one-line reason)."""
    return any(f.sniff(head) for f in FORMATS) or any(u.matches(head) for u in _UNSUPPORTED)


def by_name(name: str) -> ImageFormat:
    return _BY_NAME[name]


def detect(data: bytes, *, label: str = "input") -> ImageFormat:
    """The format class for ``data``; NotAnImageError / UnsupportedFormatError / AnimatedImageError otherwise."""
    if not data:
        raise NotAnImageError(f"{label} is empty (0 bytes): not an image")
    head = data[:64]
    for fmt in FORMATS:
        if fmt.sniff(head):
            fmt.check_supported(data, label)
            return fmt
    for refused in _UNSUPPORTED:
        if refused.matches(data):
            if refused.frames is not None and refused.frames(data) > 1:
                raise AnimatedImageError(f"{label} is an animated {refused.name}: cloakd processes still photos only")
            raise UnsupportedFormatError(
                f"{label} is a {refused.name} image, which cloakd does not process: convert it to JPEG or PNG"
            )
    raise NotAnImageError(f"{label} is not an image cloakd recognises (JPEG, PNG, WebP, HEIC/HEIF or TIFF)")
