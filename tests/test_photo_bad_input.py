"""Bad input gets a specific error type and a one-line message; the CLI keeps going and never touches inputs."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, features

from cloakd.core.errors import (
    AnimatedImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from cloakd.core.photo.decode import decode
from cloakd.daemon.cli import main


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG header claiming width x height RGB pixels with a tiny IDAT: no need to allocate the pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def _save(frames: list[Image.Image], fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=len(frames) > 1, append_images=frames[1:], **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def frames(data_dir) -> list[Image.Image]:
    photo = Image.open(data_dir / "metadata" / "sony-cybershot.jpg").convert("RGB").resize((64, 48))
    return [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


@pytest.fixture(scope="module")
def bad_inputs(data_dir, frames) -> dict[str, tuple[bytes, type]]:
    meta = data_dir / "metadata"
    jpeg = (meta / "DSCN0010.jpg").read_bytes()
    tiff = _save(frames[:1], "TIFF")
    dng_like = Image.new("RGB", (8, 8))
    exif = dng_like.getexif()
    exif[50706] = b"\x01\x04\x00\x00"  # DNGVersion: a camera raw file
    cases = {
        "empty.jpg": (b"", NotAnImageError),
        "notes.txt.jpg": (b"Meeting notes: nothing to see here.\n" * 20, NotAnImageError),
        "jpeg_half.jpg": (jpeg[: len(jpeg) // 2], TruncatedImageError),
        "jpeg_no_eoi.jpg": (jpeg[:-2], TruncatedImageError),
        "jpeg_header_only.jpg": (jpeg[:3], TruncatedImageError),
        "png_half.png": ((meta / "itxt_chunks.png").read_bytes()[:30000], TruncatedImageError),
        "webp_half.webp": ((meta / "flower.webp").read_bytes()[:15000], TruncatedImageError),
        "heic_half.heic": ((meta / "samplefilehub.heif").read_bytes()[:15000], TruncatedImageError),
        "tiff_half.tif": (tiff[: len(tiff) // 2], TruncatedImageError),
        "bomb_30000.png": (png_bomb(30000, 30000), ImageTooLargeError),
        "animated.gif": (_save(frames, "GIF"), AnimatedImageError),
        "animated.webp": (_save(frames, "WEBP"), AnimatedImageError),
        "animated.png": (_save(frames, "PNG"), AnimatedImageError),
        "pages.tif": (_save(frames, "TIFF"), AnimatedImageError),
        "still.gif": (_save(frames[:1], "GIF"), UnsupportedFormatError),
        "picture.bmp": (_save(frames[:1], "BMP"), UnsupportedFormatError),
        "raw.dng": (_save([dng_like], "TIFF", exif=exif), UnsupportedFormatError),
    }
    if features.check("avif"):
        cases["picture.avif"] = (_save(frames[:1], "AVIF"), UnsupportedFormatError)
    return cases


def test_each_bad_input_raises_its_specific_error(bad_inputs):
    for name, (data, error) in bad_inputs.items():
        with pytest.raises(error) as caught:
            decode(data, label=name)
        message = str(caught.value)
        assert name in message and "\n" not in message, message


def test_the_bomb_is_refused_from_its_header():
    """A decode attempt would fail as truncated (the IDAT holds 1 kB); the size check comes first."""
    with pytest.raises(ImageTooLargeError, match="too large"):
        decode(png_bomb(30000, 30000))


def test_our_pixel_limit_is_the_only_one_and_pillow_stays_silent(data_dir, recwarn):
    """Far above Pillow's hard limit (179 MP) and between its warning (89.5 MP) and ours, the words are
    cloakd's and Pillow warns nothing."""
    with pytest.raises(ImageTooLargeError, match=r"60000x60000 = 3600 MP, above the 100 MP limit"):
        decode(png_bomb(60000, 60000), label="huge.png")
    with pytest.raises(ImageTooLargeError, match="110 MP, above the 100 MP limit"):
        decode(png_bomb(11000, 10000))
    with pytest.raises(ImageTooLargeError, match="120 MP, above the 100 MP limit"):
        decode(png_bomb(12000, 10000))
    with pytest.raises(ImageTooLargeError):
        decode((data_dir / "metadata" / "DSCN0010.jpg").read_bytes(), max_pixels=640 * 480 - 1)
    assert decode((data_dir / "metadata" / "DSCN0010.jpg").read_bytes(), max_pixels=640 * 480).size == (640, 480)
    assert [str(w.message) for w in recwarn] == []


def test_inspect_says_a_bomb_is_too_large(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(60000, 60000))
    assert main(["inspect", str(bomb)]) == 2
    captured = capsys.readouterr()
    assert "60000 x 60000 pixels" in captured.out and "cloakd cannot process it" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "3600 MP, above the 100 MP limit" in err[0]
    assert main(["inspect", "--json", str(bomb)]) == 2
    assert "above the 100 MP limit" in json.loads(capsys.readouterr().out)[0]["problem"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_strip_reports_one_line_per_bad_file_and_continues(bad_inputs, data_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, (data, _) in bad_inputs.items():
        (inputs / name).write_bytes(data)
    good = inputs / "good.jpg"
    good.write_bytes((data_dir / "metadata" / "canon-ixus.jpg").read_bytes())
    before = {p.name: _sha(p) for p in inputs.iterdir()}
    out = tmp_path / "out"
    paths = sorted(str(p) for p in inputs.iterdir())
    assert main(["strip", *paths, "--out", str(out)]) != 0
    err_lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("cloakd: strip: ")]
    assert len(err_lines) == len(bad_inputs)  # besides the progress lines
    assert all(line.startswith("cloakd: error: ") for line in err_lines)
    assert {p.name: _sha(p) for p in inputs.iterdir()} == before  # inputs untouched, none deleted
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg"]  # the good file still got through


def test_cli_inspect_reports_bad_files_in_one_line(bad_inputs, tmp_path, capsys):
    path = tmp_path / "notes.jpg"
    path.write_bytes(bad_inputs["notes.txt.jpg"][0])
    assert main(["inspect", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an image" in err[0]


def webp_bomb(width: int, height: int) -> bytes:
    """A WebP whose VP8X header declares width x height (no image data)."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def test_a_webp_header_beyond_pillows_limit_is_too_large_not_a_crash():
    """Found by bench/fuzz.py: Pillow's WebP plugin applies its own pixel limit while reading the header,
    before cloakd sees the size; inspect raised DecompressionBombError instead of reporting it."""
    from cloakd.core.photo.inspect import inspect

    bomb = webp_bomb(2**24, 2**24)
    report = inspect(bomb, label="bomb.webp")
    assert report.problem.startswith("bomb.webp is too large to decode safely") and report.size is None
    with pytest.raises(ImageTooLargeError, match="bomb.webp is too large"):
        decode(bomb, label="bomb.webp")


def _tiff_with_a_huge_tag(tiff_bytes: bytes, tag: int, count: int) -> bytes:
    """``tiff_bytes`` (little-endian, as Pillow writes) with the ASCII ``tag`` of ``count`` bytes claiming
    16 MB: Pillow skips the tag with a warning and reads the rest of the directory."""
    entry = struct.pack("<HHI", tag, 2, count)
    at = tiff_bytes.index(entry)
    return tiff_bytes[:at] + struct.pack("<HHI", tag, 2, 0x00FFFFF0) + tiff_bytes[at + len(entry) :]


def _broken_exif() -> bytes:
    """An EXIF block whose ImageDescription (40 ASCII bytes) points past the end: Pillow warns on reading it."""
    directory = struct.pack("<H", 1) + struct.pack("<HHII", 270, 2, 40, 0x00FFFFF0) + struct.pack("<I", 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + directory


def test_pillows_warnings_on_a_jpegs_exif_stay_quiet_and_the_photo_is_stripped(frames, caplog):
    """Found by bench/fuzz.py: Pillow reads a JPEG's EXIF for itself (for the DPI) and warns about damage there
    ("Possibly corrupt EXIF data", "Tag data larger than file", "Truncated File Read") on stderr, where the
    service's journal would fill with it. That EXIF is metadata cloakd reads on its own and never writes, so
    the photo is processed; Pillow's words are one debug log line naming the file."""
    import logging
    import warnings

    from cloakd.core.photo.inspect import inspect
    from cloakd.core.photo.strip import strip_bytes

    data = _save(frames[:1], "JPEG", exif=_broken_exif())
    caplog.set_level(logging.DEBUG, logger="cloakd.core.photo.decode")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning reaching the caller fails the test
        report = inspect(data, label="odd.jpg")
        clean = strip_bytes(data, label="odd.jpg")
    assert report.size == (64, 48) and any(f.source.startswith("APP1 Exif") for f in report.findings)
    assert clean.format == "JPEG" and b"Exif" not in clean.data
    said = [r.getMessage() for r in caplog.records if r.name == "cloakd.core.photo.decode"]
    assert said and all(m.startswith("odd.jpg: damaged metadata, dropped as all metadata is (Pillow: ") for m in said)


def test_a_tiff_or_png_header_pillow_warns_about_is_refused_as_damaged(frames):
    """Found by bench/fuzz.py: where Pillow's warning is about what describes the picture (a TIFF directory, a
    PNG's animation control), the file was decoded as Pillow guessed; it is now a damaged file with a specific
    error, inspect still reports on it, and no warning reaches the caller."""
    import warnings

    from cloakd.core.photo.inspect import inspect

    tiff = _tiff_with_a_huge_tag(_save(frames[:1], "TIFF", tiffinfo={270: "x" * 39}), 270, 40)
    png = _save(frames[:1], "PNG")
    iend = png.index(b"IEND") - 4
    apng = png[:iend] + _png_chunk(b"acTL", struct.pack(">II", 0, 0)) + png[iend:]  # zero frames: invalid APNG
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, data, said in (("dir.tif", tiff, "Tag data larger than file"), ("zero.png", apng, "Invalid APNG")):
            with pytest.raises(TruncatedImageError) as caught:
                decode(data, label=name)
            message = str(caught.value)
            assert message.startswith(f"{name} is a damaged ") and said in message and "\n" not in message
            assert inspect(data, label=name).format in ("TIFF", "PNG")  # a report, not an error


def test_other_code_s_warnings_pass_through_the_pillow_quieting():
    import warnings

    from cloakd.core.photo.quiet import pillow_quietly

    def call() -> int:
        warnings.warn("not Pillow's", RuntimeWarning, stacklevel=1)
        return 7

    with pytest.warns(RuntimeWarning, match="not Pillow's"):
        assert pillow_quietly(call) == (7, [])
