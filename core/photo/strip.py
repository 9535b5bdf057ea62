"""The one strip-and-verify step that every writer of photos goes through.

Stripping is re-encoding, not editing: the (possibly cloaked) pixels are written into a fresh container,
so nothing of the source file (EXIF, GPS, maker notes, thumbnails, XMP, IPTC, comments, previews after
the image, unknown blocks) can travel along, known or not. The optional allow-list (keep.py) adds a
fresh minimal EXIF block. The written bytes are then verified (verify.py); a file that fails is an error,
never a warning, and no bytes are returned for it.

``cloakd strip``, ``cloakd protect`` and the service all call :func:`strip_and_verify`: the cloak pipeline
passes the decoded Photo and its processed pixels and gets verified clean bytes back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .container import OutputOptions
from .decode import DEFAULT_MAX_PIXELS, Photo, decode
from .encode import encode, output_format
from .formats import by_name
from .keep import minimal_exif
from .verify import verify_clean


@dataclass(frozen=True)
class CleanPhoto:
    """Verified clean file contents: ``format`` as written and the EXIF tags kept (empty by default)."""

    data: bytes
    format: str
    kept: tuple[str, ...]

    @property
    def extension(self) -> str:
        """File name extension for ``format`` (".jpg", ".png", ".webp", ".heic", ".tif")."""
        return by_name(self.format).extension


def strip_and_verify(
    photo: Photo,
    pixels: np.ndarray | None = None,
    *,
    keep: Iterable[str] = (),
    options: OutputOptions = OutputOptions(),
) -> CleanPhoto:
    """Write ``pixels`` (default: ``photo.pixels``) like ``photo`` into a fresh, verified clean file.

    ``pixels`` must have the shape of ``photo.pixels`` (uint8, upright, sRGB); ``photo.alpha`` is kept.
    ``keep`` names EXIF tags to copy from the source (keep.py). Raises MetadataError if verification fails,
    MetadataPolicyError for a tag that may not be kept.
    """
    if pixels is None:
        pixels = photo.pixels
    elif pixels.shape != photo.pixels.shape:
        raise ValueError(f"processed pixels are {pixels.shape}, the photo is {photo.pixels.shape}")
    exif, kept = minimal_exif(photo.exif, keep)
    fmt = output_format(photo.format, options)
    data = encode(pixels, photo.alpha, format=fmt, lossless=photo.lossless, exif=exif, options=options)
    verify_clean(data, kept=kept)
    return CleanPhoto(data=data, format=fmt, kept=kept)


def strip_bytes(
    data: bytes,
    *,
    keep: Iterable[str] = (),
    options: OutputOptions = OutputOptions(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    label: str = "input",
) -> CleanPhoto:
    """Decode ``data`` and write its pixels clean (what ``cloakd strip`` does per file)."""
    return strip_and_verify(decode(data, max_pixels=max_pixels, label=label), keep=keep, options=options)
