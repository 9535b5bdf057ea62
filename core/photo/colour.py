"""Bring decoded pixels to the one space the engine works in: 8-bit sRGB (or 8-bit grey).

ICC: a picture with an embedded profile is converted to sRGB with LittleCMS (PIL.ImageCms) using the
profile's own preferred rendering intent (for the matrix/TRC profiles cameras and phones embed, such as
Display P3 or Adobe RGB, every intent is the same colorimetric mapping). Out-of-gamut colours are clipped.
Outputs carry no profile, which by convention (web, W3C CSS Color, all browsers) means sRGB, so the
written file displays as the input did. A profile that LittleCMS cannot read, or that does not match the
pixel layout (a CMYK profile on RGB pixels), is ignored, as browsers do. Greyscale with a grey profile
stays greyscale (converted through sRGB, then back to one channel). CMYK without a profile uses Pillow's
naive conversion. HEIF "nclx" colour descriptions are taken as sRGB (the common BT.709/sRGB case).

16-bit samples: reduced to 8 bits as round(v * 255 / 65535) with an 8x8 ordered (Bayer) dither of
+-0.5 step, so smooth 16-bit gradients keep their average level instead of banding. Values that were
8-bit to start with (v = 257 * k, as most 16-bit files made from 8-bit sources) come back exactly as k.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms


def _bayer(size: int) -> np.ndarray:
    """The recursive Bayer index matrix (values 0 .. size*size-1), finest detail in the low bits."""
    m = np.array([[0, 2], [3, 1]])
    while m.shape[0] < size:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return m


# Thresholds (k + 0.5) / 64 for k = 0..63: mean exactly 0.5, so the dither is rounding on average.
_DITHER = ((_bayer(8) + 0.5) / 64.0).astype(np.float32)


def reduce_depth(samples: np.ndarray) -> np.ndarray:
    """uint16 (H x W or H x W x C) to uint8 with an ordered dither (see module docstring)."""
    h, w = samples.shape[:2]
    threshold = np.tile(_DITHER, ((h + 7) // 8, (w + 7) // 8))[:h, :w]
    if samples.ndim == 3:
        threshold = threshold[..., None]
    scaled = samples.astype(np.float32) * np.float32(255.0 / 65535.0)
    return np.minimum(np.floor(scaled + threshold), 255).astype(np.uint8)


def load_profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    """The embedded profile, or None if absent or unreadable."""
    if not icc:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        return None


def profile_name(icc: bytes | None) -> str:
    """The profile's description ("Display P3", "Adobe RGB (1998)"), or "" if it has none readable."""
    profile = load_profile(icc)
    if profile is None:
        return ""
    try:
        return ImageCms.getProfileDescription(profile).strip()
    except ImageCms.PyCMSError:
        return ""


def to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """``image`` (mode L, RGB or CMYK) as sRGB: mode L stays L, everything else becomes RGB."""
    profile = load_profile(icc)
    if profile is not None:
        try:
            intent = ImageCms.getDefaultIntent(profile)
            srgb = ImageCms.createProfile("sRGB")  # per call: LittleCMS profiles are not shared between threads
            converted = ImageCms.profileToProfile(image, profile, srgb, renderingIntent=intent, outputMode="RGB")
        except ImageCms.PyCMSError:
            converted = None
        if converted is not None:
            if image.mode == "L":
                return Image.fromarray(np.asarray(converted).mean(axis=2).round().astype(np.uint8))
            return converted
    return image if image.mode in ("L", "RGB") else image.convert("RGB")
