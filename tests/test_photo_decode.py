"""Decoding: content-based formats, all 8 orientations, ICC to sRGB, greyscale, alpha, 16-bit PNG, MPO.

Expected pixels come from Pillow/LittleCMS used directly on the source (the definition of the
operation), or from test-side constructions (rotations made here, PNGs written by hand with zlib).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import piexif
import pytest
from PIL import Image, ImageCms, ImageOps

from cloakd.core.photo.container import ImageFormat, OutputOptions
from cloakd.core.photo.decode import decode, decode_file
from cloakd.core.photo.formats import FORMATS, by_name
from cloakd.core.photo.strip import strip_and_verify

T = Image.Transpose
# EXIF orientation -> how to make the *stored* image from the upright one (the inverse of what a viewer does):
# 6 = "rotate 90 CW to display", so it is stored rotated 90 CCW (Pillow's ROTATE_90); 8 is the opposite.
STORED_FROM_UPRIGHT = {
    1: None,
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_90,
    7: T.TRANSVERSE,
    8: T.ROTATE_270,
}


@pytest.fixture(scope="module")
def upright(data_dir) -> Image.Image:
    """A real photo (two people), reduced to keep the test fast; not square, so rotations show."""
    return Image.open(data_dir / "metadata" / "canon-ixus.jpg").convert("RGB").resize((160, 120))


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (filter 0 rows), independent of Pillow's PNG writer."""
    h, w = samples.shape[:2]
    rows = samples.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_exactly(upright, orientation):
    transform = STORED_FROM_UPRIGHT[orientation]
    stored = upright.transpose(transform) if transform is not None else upright
    data = _save(stored, "PNG", exif=piexif.dump({"0th": {piexif.ImageIFD.Orientation: orientation}}))
    photo = decode(data)
    assert photo.orientation == orientation
    assert photo.size == upright.size
    np.testing.assert_array_equal(photo.pixels, np.asarray(upright))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_orientation_is_applied(upright, orientation):
    stored = upright.transpose(STORED_FROM_UPRIGHT[orientation])
    data = _save(stored, "JPEG", quality=95, exif=piexif.dump({"0th": {piexif.ImageIFD.Orientation: orientation}}))
    photo = decode(data)
    assert photo.size == upright.size
    # JPEG noise only: a wrong rotation of this photo differs by tens of levels on average.
    assert np.abs(photo.pixels.astype(int) - np.asarray(upright)).mean() < 3


def test_corpus_portrait_is_displayed_upright(data_dir):
    photo = decode_file(data_dir / "metadata" / "portrait_6.jpg")
    reference = ImageOps.exif_transpose(Image.open(data_dir / "metadata" / "portrait_6.jpg"))
    assert photo.orientation == 6
    assert photo.size == reference.size == (450, 600)


def test_format_comes_from_content_not_extension(data_dir, tmp_path):
    wrong = tmp_path / "really_a_png.jpg"
    wrong.write_bytes((data_dir / "metadata" / "exif.png").read_bytes())
    assert decode_file(wrong).format == "PNG"
    heic_named_jpg = tmp_path / "photo.jpg"
    heic_named_jpg.write_bytes((data_dir / "metadata" / "samplefilehub.heif").read_bytes())
    assert decode_file(heic_named_jpg).format == "HEIF"


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (8-bit) to CIE L*a*b* (D65), for CIE76 colour differences."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _delta_e(a: np.ndarray, b: np.ndarray, block: int = 8) -> float:
    """Mean CIE76 difference of 8x8-block averages: colour shifts count, compression noise mostly not."""
    h, w = a.shape[0] // block * block, a.shape[1] // block * block

    def means(x):
        return x[:h, :w].reshape(h // block, block, w // block, block, 3).mean((1, 3))

    return float(np.linalg.norm(_lab(means(a)) - _lab(means(b)), axis=-1).mean())


ICC_FILES = [
    "BlueSquare.jpg",
    "Canon_40D.jpg",
    "IMG_5195.HEIC",
    "Nikon_D70.jpg",
    "Pentax_K10D.jpg",
    "flower2.webp",
    "portrait_6.jpg",
    "xmp_test.jpg",
]


@pytest.mark.parametrize("name", ICC_FILES)
def test_icc_photos_keep_their_displayed_colours(data_dir, name):
    """Measured (this machine): decoded vs LittleCMS reference 0.000; written file vs reference, mean |d| per
    channel 0.22-1.57 and block dE76 0.10-0.61 (flower2.webp is lossy WebP); the same picture *without*
    conversion is off by dE 2.65 (Display P3), 6.26 (Generic RGB), 0.71 (Adobe RGB)."""
    path = data_dir / "metadata" / name
    source = Image.open(path)
    icc = source.info["icc_profile"]
    shown = source if source.format == "HEIF" else ImageOps.exif_transpose(source)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    reference = np.asarray(
        ImageCms.profileToProfile(
            shown.convert("RGB"), ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb, outputMode="RGB"
        )
    )
    photo = decode_file(path)
    assert photo.icc_profile == icc
    assert np.abs(photo.pixels.astype(int) - reference).mean() < 0.5
    written = np.asarray(Image.open(io.BytesIO(strip_and_verify(photo).data)).convert("RGB"))
    assert written.shape == reference.shape
    assert np.abs(written.astype(int) - reference).mean() < 2.0
    error = _delta_e(written, reference)
    assert error < 1.0
    unconverted = np.asarray(shown.convert("RGB"))
    if _delta_e(unconverted, reference) > 0.5:  # wide-gamut profiles: conversion must matter, and help
        assert error < _delta_e(unconverted, reference) / 2


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_greyscale_stays_greyscale(upright, fmt):
    grey = upright.convert("L")
    photo = decode(_save(grey, fmt))
    assert photo.is_grey and photo.pixels.shape == (120, 160)
    written = Image.open(io.BytesIO(strip_and_verify(photo).data))
    assert written.mode == "L"
    assert np.abs(np.asarray(written).astype(int) - photo.pixels).mean() < 1.5


@pytest.mark.parametrize("fmt, kwargs", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_alpha_is_kept(upright, fmt, kwargs):
    alpha = np.tile(np.linspace(0, 255, 160).astype(np.uint8), (120, 1))
    rgba = Image.fromarray(np.dstack([np.asarray(upright), alpha]))
    photo = decode(_save(rgba, fmt, **kwargs))
    np.testing.assert_array_equal(photo.alpha, alpha)
    written = Image.open(io.BytesIO(strip_and_verify(photo).data))
    assert written.mode == "RGBA" and written.format == fmt
    np.testing.assert_array_equal(np.asarray(written)[..., 3], alpha)
    opaque = alpha == 255
    np.testing.assert_array_equal(np.asarray(written)[..., :3][opaque], np.asarray(upright)[opaque])


def test_alpha_of_lossy_webp_is_kept_losslessly(upright):
    alpha = np.tile(np.linspace(0, 255, 160).astype(np.uint8), (120, 1))
    data = _save(Image.fromarray(np.dstack([np.asarray(upright), alpha])), "WEBP", quality=90)
    photo = decode(data)
    assert not photo.lossless
    written = Image.open(io.BytesIO(strip_and_verify(photo).data))
    assert np.abs(np.asarray(written)[..., 3].astype(int) - photo.alpha).max() <= 1


@pytest.mark.parametrize("colour_type, channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_16_bit_png_keeps_full_precision_without_banding(upright, colour_type, channels):
    """Policy: 16-bit samples are dithered to 8 bits. Every sample is within one 8-bit step of v*255/65535,
    and 8x8-block averages track the 16-bit values (no banding), unlike Pillow's plain truncation."""
    base = np.asarray(upright.convert("RGBA" if channels == 4 else "RGB")).astype(np.float64)
    ramp = np.linspace(0, 300, 160)[None, :, None]  # a smooth 16-bit ramp across the photo
    samples = np.clip(base[..., :channels] * 257 + ramp - 150, 0, 65535).astype(np.uint16)
    if channels == 2:
        samples = np.dstack([samples[..., 0], samples[..., 1]])
    if channels == 1:
        samples = samples[..., 0]
    photo = decode(_png16(samples, colour_type))
    assert photo.bit_depth == 16
    got = photo.pixels if channels in (1, 3) else np.dstack([photo.pixels, photo.alpha])
    exact = samples.astype(np.float64) * 255 / 65535
    got = got.reshape(exact.shape).astype(np.float64)
    assert np.abs(got - exact).max() < 1.0
    blocks = got.reshape(15, 8, 20, 8, -1).mean((1, 3)) - exact.reshape(15, 8, 20, 8, -1).mean((1, 3))
    truncated = (samples >> 8).astype(np.float64).reshape(exact.shape)
    truncation_error = truncated.reshape(15, 8, 20, 8, -1).mean((1, 3)) - exact.reshape(15, 8, 20, 8, -1).mean((1, 3))
    assert np.abs(blocks).mean() < 0.1 < np.abs(truncation_error).mean()
    assert Image.open(io.BytesIO(strip_and_verify(photo).data)).mode in ("L", "LA", "RGB", "RGBA")  # 8-bit PNG


def test_16_bit_png_made_from_8_bit_values_round_trips_exactly(upright):
    base = np.asarray(upright).astype(np.uint16) * 257
    photo = decode(_png16(base, 2))
    np.testing.assert_array_equal(photo.pixels, np.asarray(upright))


def test_heic_decodes_at_full_size_with_its_icc_profile(data_dir):
    photo = decode_file(data_dir / "metadata" / "IMG_5195.HEIC")
    assert photo.format == "HEIF"
    assert photo.size == (2566, 3313)
    assert photo.icc_profile and b"desc" in photo.icc_profile


def test_mpo_secondary_images_are_not_frames(upright):
    """A JPEG with MPF secondary images (as phones write for depth/gain maps) decodes as its primary image."""
    second = upright.transpose(T.ROTATE_180)
    data = _save(upright, "MPO", save_all=True, append_images=[second], quality=95)
    assert data.count(b"MPF\x00") == 1
    photo = decode(data)
    assert photo.format == "JPEG" and photo.size == upright.size
    assert np.abs(photo.pixels.astype(int) - np.asarray(upright)).mean() < 3


def test_each_format_class_carries_its_own_rules():
    """The container interface is abstract, and what differs between formats is asked of the format's class."""
    with pytest.raises(TypeError):
        ImageFormat()
    written_as = {f.name: f.output_name(OutputOptions()) for f in FORMATS}
    assert written_as == {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "HEIF": "JPEG", "TIFF": "TIFF"}
    assert by_name("HEIF").output_name(OutputOptions(heic_as="HEIF")) == "HEIF"
    assert [f.name for f in FORMATS if f.exif_structure_tags] == ["TIFF"]  # the TIFF file is its EXIF structure
    assert [f.name for f in FORMATS if not f.applies_exif_orientation()] == ["HEIF"]


def test_each_format_declares_its_extensions_and_a_folder_offers_the_files_that_have_one(tmp_path):
    """Discovery (core/photo/discover.py): the extensions come from the format classes, the output's first;
    they filter a folder's files only, and a file named on its own is offered whatever its name."""
    from cloakd.core.errors import CloakdError
    from cloakd.core.photo.discover import photo_files

    assert {f.name: f.extension for f in FORMATS} == {
        "JPEG": ".jpg",
        "PNG": ".png",
        "WEBP": ".webp",
        "HEIF": ".heic",
        "TIFF": ".tif",
    }
    assert all(f.extension in f.extensions for f in FORMATS)
    names = ["a.JPG", "b.jpeg", "c.heif", "sub/d.tiff", "sub/e.webp", "f.png", "notes.txt", "raw.cr2", "noext"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()
    assert [p.relative_to(tmp_path).as_posix() for p in photo_files(tmp_path)] == sorted(names[:6])
    assert photo_files(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]  # named: its content decides
    with pytest.raises(CloakdError, match="no such file or folder"):
        photo_files(tmp_path / "missing")
