"""Decode image bytes into upright, sRGB, 8-bit pixels: the only form the rest of cloakd sees.

Policies (also the user-facing documentation):
- Format from content (magic bytes), never from the file name: see formats.py for what is supported.
- Pixel limit (decompression bombs): ``max_pixels`` (default 100 MP, i.e. 100,000,000 pixels: above every
  current phone's default output and 12,000 x 8,000 cameras) is checked from the header, before any pixel
  is decoded. It is the only limit: the header is read through the format's Pillow plugin directly
  (:func:`open_image`), so Pillow's own guard (a warning above 89.5 MP and an error above 179 MP, in its
  own words) never speaks; ``Image.MAX_IMAGE_PIXELS`` is not changed.
- Compressed metadata is expanded only up to a limit (png.py's MAX_INFLATED): a PNG whose iCCP or text
  chunk would expand beyond it is a decompression bomb too (ImageTooLargeError), however small its pixels.
- Truncated or damaged files are errors (Pillow's LOAD_TRUNCATED_IMAGES stays False): no grey half-photos.
- Animated images (GIF, WebP, APNG, HEIF sequences) and multi-page TIFFs: AnimatedImageError. A JPEG's
  MPF secondary images and a HEIF collection's non-primary images are not frames: only the primary
  picture is processed; the others are dropped (which stripping wants).
- Orientation: all 8 EXIF orientations are applied to the pixels (HEIF: libheif applies irot/imir).
- Colour: converted to sRGB when an ICC profile is embedded; greyscale stays greyscale; alpha is kept
  separately; 16-bit samples are reduced to 8 bits with an ordered dither (colour.py).
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import AnimatedImageError, ImageTooLargeError, TruncatedImageError, UnsupportedFormatError
from .colour import reduce_depth, to_srgb
from .container import ImageFormat, Kind, first_payload
from .formats import detect
from .orient import apply_orientation, orientation_of
from .quiet import pillow_quietly

log = logging.getLogger(__name__)
DEFAULT_MAX_PIXELS = 100_000_000
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(frozen=True, eq=False)
class Photo:
    """A decoded photo, ready for processing.

    pixels: H x W x 3 RGB or H x W grey, uint8, upright (orientation applied), sRGB.
    alpha: H x W uint8, or None when the source has no transparency.
    format: the source's container format ("JPEG", "PNG", "WEBP", "HEIF", "TIFF"), found from content.
    icc_profile: the source's embedded profile, already applied; kept for reference, never written.
    exif: the source's EXIF (TIFF structure), read only to copy allow-listed tags; never written as is.
    bit_depth: bits per sample of the source (16-bit PNG/TIFF samples were dithered down to 8).
    lossless: whether the source compression was lossless (a lossless WebP is written lossless again).
    orientation: the EXIF orientation that was applied (1-8; 1 for HEIF, whose transforms libheif applies).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    icc_profile: bytes | None
    exif: bytes | None
    bit_depth: int
    lossless: bool
    orientation: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed."""
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def is_grey(self) -> bool:
        return self.pixels.ndim == 2

    @property
    def rgb(self) -> np.ndarray:
        """H x W x 3 RGB (a grey photo's plane repeated), what the face models take."""
        return np.repeat(self.pixels[..., None], 3, axis=2) if self.is_grey else self.pixels


def decode_file(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Read ``path`` and decode it; errors name the file."""
    path = Path(path)
    return decode(path.read_bytes(), max_pixels=max_pixels, label=str(path))


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, label: str = "input") -> Photo:
    """Decode ``data`` (see the module docstring for the policies). ``label`` names the input in errors."""
    fmt = detect(data, label=label)
    blocks = fmt.blocks(data)
    bombs = [b.name for b in blocks if b.kind is Kind.BOMB]
    if bombs:
        raise ImageTooLargeError(bomb(label, bombs[0]))
    damage = [b.name for b in blocks if b.kind is Kind.DAMAGED]
    if damage:  # some decoders (libheif) fill missing data silently; the container walk does not
        raise TruncatedImageError(f"{label} is a truncated or damaged {fmt.name} file ({damage[0]})")
    with _pillow_errors(fmt, label):
        image = open_image(data, fmt, label)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(too_large(label, width, height, max_pixels))
        frames, said = pillow_quietly(lambda: fmt.frame_count(image, blocks))  # Pillow may read further frames
        _heed(said, image, fmt, label)
        if frames > 1:
            raise AnimatedImageError(
                f"{label} has {frames} frames or pages (animated or multi-page "
                f"{fmt.name}): cloakd processes still photos only"
            )
        high = _load(image, fmt, data, label)
    exif = first_payload(blocks, Kind.EXIF)
    icc = first_payload(blocks, Kind.ICC) or image.info.get("icc_profile") or None
    orientation = orientation_of(exif) if fmt.applies_exif_orientation() else 1
    colour, alpha, depth = _planes(image, high, label)
    pixels = np.asarray(to_srgb(colour, icc))
    return Photo(
        pixels=apply_orientation(pixels, orientation),
        alpha=None if alpha is None else apply_orientation(alpha, orientation),
        format=fmt.name,
        icc_profile=icc,
        exif=exif,
        bit_depth=depth,
        lossless=fmt.is_lossless(blocks),
        orientation=orientation,
    )


def open_image(data: bytes, fmt: ImageFormat, label: str = "input") -> Image.Image:
    """Pillow's image of ``data`` through ``fmt``'s plugin: the header is read, no pixel is decoded yet.

    What ``Image.open`` does, without its decompression-bomb check (see the module docstring): the
    caller checks cloakd's own limit on ``size`` before decoding. UnidentifiedImageError for a header
    the plugin cannot read, as from ``Image.open``; ImageTooLargeError when a plugin applies Pillow's
    limit while reading the header (WebP does), before the size reaches the caller.

    Pillow's warnings are never printed (quiet.py): where they mean the picture is damaged
    (``fmt.warnings_are_damage``) they are a TruncatedImageError naming the file; otherwise they are
    about metadata Pillow read for itself, which cloakd reads on its own and never writes: a debug log line.
    """
    Image.preinit()
    if fmt.pillow_id not in Image.OPEN:
        Image.init()
    factory, _ = Image.OPEN[fmt.pillow_id]
    try:
        image, said = pillow_quietly(lambda: factory(io.BytesIO(data), ""))
    except (SyntaxError, IndexError, TypeError, struct.error) as e:
        raise UnidentifiedImageError(f"cannot read the {fmt.name} header: {e}") from e
    except Image.DecompressionBombError as e:  # some plugins (WebP) apply Pillow's own limit to the header
        detail = str(e).split(",")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise ImageTooLargeError(
            f"{label} is too large to decode safely ({detail}): reduce its resolution first"
        ) from e
    _heed(said, image, fmt, label)
    return image


def _load(image: Image.Image, fmt: ImageFormat, data: bytes, label: str) -> np.ndarray | None:
    """Decode the pixels, and the full-depth samples a format reads apart (``fmt.high_depth_samples``)."""

    def load() -> np.ndarray | None:
        high = fmt.high_depth_samples(image, data)
        image.load()
        return high

    high, said = pillow_quietly(load)
    _heed(said, image, fmt, label)
    return high


def _heed(said: list[str], image: Image.Image, fmt: ImageFormat, label: str) -> None:
    """What Pillow warned about ``image`` (quiet.py): a damaged file, or damaged metadata (a debug line)."""
    if said and fmt.warnings_are_damage:
        image.close()
        raise TruncatedImageError(
            f"{label} is a damaged {fmt.name} file, and cloakd does not guess its picture (the decoder: {said[0]})"
        )
    if said:
        log.debug("%s: damaged metadata, dropped as all metadata is (Pillow: %s)", label, "; ".join(said))


def too_large(label: str, width: int, height: int, limit: int) -> str:
    """The message for an image above the pixel limit."""
    return (
        f"{label} is too large: {width}x{height} = {width * height / 1e6:.0f} MP, above the "
        f"{limit / 1e6:.0f} MP limit (decompression-bomb guard); reduce its resolution first"
    )


def bomb(label: str, block: str) -> str:
    """The message for a compressed block that expands beyond the limit (Kind.BOMB)."""
    return f"{label} is a decompression bomb: its {block}; cloakd does not expand it"


@contextmanager
def _pillow_errors(fmt: ImageFormat, label: str) -> Iterator[None]:
    """Turn the many ways Pillow and libheif report bad data into our error types, as one line."""
    try:
        yield
    except Image.DecompressionBombError as e:
        detail = str(e).split(",")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise ImageTooLargeError(
            f"{label} is too large to decode safely ({detail}): reduce its resolution first"
        ) from e
    except UnidentifiedImageError as e:
        raise TruncatedImageError(f"{label} looks like {fmt.name} but its header is truncated or damaged") from e
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError, struct.error, zlib.error) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TruncatedImageError(f"{label} is a truncated or damaged {fmt.name} file ({reason})") from e


def _planes(image: Image.Image, high: np.ndarray | None, label: str) -> tuple[Image.Image, np.ndarray | None, int]:
    """(colour image in mode L/RGB/CMYK, alpha array or None, source bits per sample)."""
    if high is None and image.mode in _HIGH_DEPTH_MODES:
        high = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if high is not None:
        return _high_depth_planes(high)
    mode = image.mode
    if mode == "F":
        raise UnsupportedFormatError(f"{label} has floating-point samples, which cloakd does not process")
    if mode in ("P", "PA"):
        image = _depalette(image)
        mode = image.mode
    elif "transparency" in image.info and mode in ("L", "RGB"):
        image = image.convert("LA" if mode == "L" else "RGBA")
        mode = image.mode
    if mode == "1":
        return image.convert("L"), None, 1
    if mode in ("L", "RGB", "CMYK"):
        return image, None, 8
    if mode == "LA":
        return image.getchannel("L"), np.asarray(image.getchannel("A")), 8
    if mode == "RGBA":
        return image.convert("RGB"), np.asarray(image.getchannel("A")), 8
    return image.convert("RGB"), None, 8  # YCbCr, LAB, HSV, RGBX: Pillow converts


def _high_depth_planes(high: np.ndarray) -> tuple[Image.Image, np.ndarray | None, int]:
    """The planes of 16-bit samples (H x W or H x W x C), reduced to 8 bits (reduce_depth)."""
    samples = reduce_depth(high)
    if samples.ndim == 2:
        return Image.fromarray(samples), None, 16
    colour_channels = 1 if samples.shape[2] in (1, 2) else 3
    colour = samples[..., 0] if colour_channels == 1 else samples[..., :3]
    alpha = samples[..., colour_channels] if samples.shape[2] in (2, 4) else None
    return Image.fromarray(np.ascontiguousarray(colour)), alpha, 16


def _depalette(image: Image.Image) -> Image.Image:
    """A palette image as L/LA when every palette entry is grey, else RGB/RGBA."""
    has_alpha = image.mode == "PA" or "transparency" in image.info
    rgb = image.convert("RGBA" if has_alpha else "RGB")
    channels = np.asarray(rgb)
    grey = bool((channels[..., 0] == channels[..., 1]).all() and (channels[..., 1] == channels[..., 2]).all())
    if not grey:
        return rgb
    return rgb.convert("LA" if has_alpha else "L")
