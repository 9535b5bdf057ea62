"""Write pixels into a fresh file: nothing of the source container is copied, ever.

Policies (defaults in container.OutputOptions):
- Same format and dimensions as the input; HEIC/HEIF becomes JPEG (``heic_as="HEIF"`` keeps HEIF).
- JPEG: quality 95, 4:4:4 chroma (Pillow subsampling=0), baseline; only a JFIF APP0 segment.
- PNG: lossless, 8 bits per sample (16-bit inputs were dithered to 8 at decode), no ancillary chunks.
- WebP: lossless inputs stay lossless; lossy ones at quality 95 (VP8 is always 4:2:0), alpha lossless.
- TIFF: LZW, structural tags only.
- Colour: pixels are sRGB (decode.py converted them) and no ICC profile is written: untagged means sRGB.
- Alpha is kept where the output format has it (PNG, WebP, TIFF, HEIF); for JPEG it is composited over white.
  Greyscale stays one channel except in WebP/HEIF, which store colour only (R = G = B).
- Metadata: none, except a minimal EXIF block built from the allow-list (keep.py) when one is given.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .container import ImageFormat, OutputOptions
from .formats import by_name


def output_format(source_format: str, options: OutputOptions = OutputOptions()) -> str:
    """The format a photo decoded from ``source_format`` is written in."""
    return by_name(source_format).output_name(options)


def encode(
    pixels: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    format: str,
    lossless: bool = True,
    exif: bytes | None = None,
    options: OutputOptions = OutputOptions(),
) -> bytes:
    """Encode uint8 ``pixels`` (H x W x 3 RGB or H x W grey) and optional H x W ``alpha`` as ``format``.

    ``lossless`` matters only for WebP; ``exif`` (``Exif\\0\\0`` + TIFF, from keep.minimal_exif) is the one
    piece of metadata ever written, and only when the caller passes it.
    """
    fmt = by_name(format)
    return fmt.encode(_image(pixels, alpha, fmt), exif=exif, lossless=lossless, options=options)


def _image(pixels: np.ndarray, alpha: np.ndarray | None, fmt: ImageFormat) -> Image.Image:
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels must be uint8 H x W x 3 or H x W, got {pixels.dtype} {pixels.shape}")
    if alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != pixels.shape[:2]):
        raise ValueError(f"alpha must be uint8 {pixels.shape[:2]}, got {alpha.dtype} {alpha.shape}")
    if pixels.ndim == 2 and not fmt.has_grey:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if alpha is not None and not fmt.has_alpha:
        a = alpha.astype(np.float32)[..., None] / 255.0 if pixels.ndim == 3 else alpha.astype(np.float32) / 255.0
        pixels = np.round(pixels * a + 255.0 * (1.0 - a)).astype(np.uint8)
        alpha = None
    if alpha is None:
        return Image.fromarray(np.ascontiguousarray(pixels))
    return Image.fromarray(np.dstack([pixels, alpha]))  # H x W x 2 -> LA, H x W x 4 -> RGBA
