"""Stripping, checked by exiftool (an independent reader), and verification failing closed.

exiftool is the oracle: installed from Debian (libimage-exiftool-perl) by scripts/test.sh.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image

from cloakd.core.errors import MetadataError, MetadataPolicyError
from cloakd.core.photo.container import OutputOptions
from cloakd.core.photo.decode import decode, decode_file
from cloakd.core.photo.encode import encode
from cloakd.core.photo.strip import strip_and_verify, strip_bytes
from cloakd.core.photo.verify import leftovers, verify_clean

EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool missing: scripts/test.sh installs it")

# exiftool groups a clean file may show: file-system facts, container structure, computed composites.
CLEAN_GROUPS = {"ExifTool", "System", "File", "JFIF", "PNG", "RIFF", "Composite"}
FORBIDDEN_WORDS = (
    "GPS",
    "Make",
    "Model",
    "Serial",
    "Owner",
    "Thumbnail",
    "Preview",
    "XMP",
    "IPTC",
    "Comment",
    "Caption",
    "Description",
    "Artist",
    "Copyright",
    "Keywords",
    "By-line",
    "Software",
    "MakerNote",
)
PEOPLE_IN_MULTIFACE = [
    "Jennifer Aniston",
    "Matthew Perry",
    "David Schwimmer",
    "Lisa Kudrow",
    "Matt LeBlanc",
    "Courteney Cox",
]


def exiftool(*paths: Path) -> list[dict]:
    out = subprocess.run([EXIFTOOL, "-j", "-a", "-G1", "-n", *map(str, paths)], capture_output=True, check=False)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def corpus(data_dir) -> list[Path]:
    files = sorted((data_dir / "metadata").iterdir()) + [data_dir / "groups" / "facenet-pytorch_multiface.jpg"]
    assert len(files) == 30
    return files


@pytest.fixture(scope="module")
def stripped(corpus, tmp_path_factory) -> dict[str, tuple[dict, dict, Path]]:
    """name -> (exiftool of the input, exiftool of the clean output, output path)."""
    out_dir = tmp_path_factory.mktemp("clean")
    outputs = []
    for path in corpus:
        clean = strip_bytes(path.read_bytes(), label=str(path))
        target = out_dir / f"{path.stem}{clean.extension}"
        target.write_bytes(clean.data)
        outputs.append(target)
    before = {Path(d["SourceFile"]).name: d for d in exiftool(*corpus)}
    after = {Path(d["SourceFile"]).stem: d for d in exiftool(*outputs)}
    return {p.name: (before[p.name], after[p.stem], o) for p, o in zip(corpus, outputs)}


def _displayed_size(info: dict) -> tuple[int, int]:
    width = next(v for k, v in info.items() if k.endswith(":ImageWidth"))
    height = next(v for k, v in info.items() if k.endswith(":ImageHeight"))
    if info.get("IFD0:Orientation", 1) in (5, 6, 7, 8) and info["File:FileType"] != "HEIC":
        width, height = height, width
    return width, height


def test_the_corpus_really_carries_what_we_strip(stripped):
    """Guard against a vacuous pass: the inputs have GPS, makers, serials, thumbnails, XMP, IPTC, comments."""
    keys = {k for before, _, _ in stripped.values() for k in before}
    for word in (
        "GPS:GPSLatitude",
        "IFD0:Make",
        "ExifIFD:SerialNumber",
        "IFD1:ThumbnailImage",
        "IPTC:Caption-Abstract",
        "File:Comment",
        "PNG:Comment",
        "Canon:OwnerName",
        "Panasonic:InternalSerialNumber",
    ):
        assert word in keys
    assert any(k.startswith("XMP-") for k in keys)


def test_exiftool_finds_nothing_but_the_picture_in_any_output(stripped):
    for name, (_, after, _) in stripped.items():
        groups = {k.split(":", 1)[0] for k in after if ":" in k}
        assert groups <= CLEAN_GROUPS, f"{name}: {sorted(groups - CLEAN_GROUPS)}"
        tags = [k.split(":", 1)[1] for k in after if ":" in k and not k.startswith(("System:", "ExifTool:"))]
        leaked = [t for t in tags if any(word.lower() in t.lower() for word in FORBIDDEN_WORDS)]
        assert leaked == [], f"{name}: {leaked}"
        assert {t for t in tags if after.get(f"Composite:{t}") is not None} <= {"ImageSize", "Megapixels"}


def test_outputs_have_the_displayed_dimensions_of_the_inputs(stripped):
    for name, (before, after, _) in stripped.items():
        assert _displayed_size(after) == _displayed_size(before), name


def test_the_caption_naming_the_people_is_gone(stripped):
    before, after, output = stripped["facenet-pytorch_multiface.jpg"]
    assert all(person in before["IPTC:Caption-Abstract"] for person in PEOPLE_IN_MULTIFACE)
    data = output.read_bytes().lower()
    text = json.dumps(after).lower()
    for person in PEOPLE_IN_MULTIFACE:
        for word in person.lower().split():
            assert word.encode() not in data and word.encode("utf-16-le") not in data
            assert word not in text


def test_keeping_date_time_original_writes_exactly_that_tag(data_dir, tmp_path):
    tiff = tmp_path / "DSCN0010_as.tif"  # a TIFF whose own directory carries the camera's EXIF
    with Image.open(data_dir / "metadata" / "DSCN0010.jpg") as jpeg:
        jpeg.save(tiff, "TIFF", exif=jpeg.info["exif"])
    for source in [data_dir / "metadata" / n for n in ("DSCN0010.jpg", "IMG_5195.HEIC", "flower.webp")] + [tiff]:
        name = source.name
        clean = strip_bytes(source.read_bytes(), keep=["DateTimeOriginal"])
        assert clean.kept == ("DateTimeOriginal",)
        target = tmp_path / f"{source.stem}-clean{clean.extension}"
        target.write_bytes(clean.data)
        (before,), (after,) = exiftool(source), exiftool(target)
        exif_tags = {k for k in after if k.split(":")[0] in ("IFD0", "ExifIFD", "GPS", "IFD1", "InteropIFD")}
        structure = {
            f"IFD0:{t}"
            for t in (
                "ImageWidth",
                "ImageHeight",
                "BitsPerSample",
                "Compression",
                "StripOffsets",
                "PhotometricInterpretation",
                "SamplesPerPixel",
                "RowsPerStrip",
                "StripByteCounts",
                "PlanarConfiguration",
            )
        }
        assert exif_tags - structure == {"ExifIFD:DateTimeOriginal"}, name
        assert after["ExifIFD:DateTimeOriginal"] == before["ExifIFD:DateTimeOriginal"]
        assert "IFD0:Orientation" not in after


def test_alpha_is_composited_over_white_for_jpeg_output(data_dir):
    """HEIC with transparency becomes JPEG (no alpha): transparent pixels turn white, opaque ones stay."""
    with Image.open(data_dir / "metadata" / "sony-cybershot.jpg") as image:
        rgb = np.asarray(image.convert("RGB").resize((64, 48)))
    alpha = np.zeros((48, 64), np.uint8)
    alpha[:, 32:] = 255
    heic = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha])).save(heic, "HEIF", quality=-1)
    photo = decode(heic.getvalue())
    assert photo.alpha is not None
    written = np.asarray(Image.open(io.BytesIO(strip_and_verify(photo).data)))
    assert written[:, :30].min() >= 250
    assert np.abs(written[:, 34:].astype(int) - photo.pixels[:, 34:]).mean() < 2


def test_tags_that_may_never_be_kept_are_refused(data_dir):
    data = (data_dir / "metadata" / "DSCN0010.jpg").read_bytes()
    for tag in ("Orientation", "GPSLatitude", "MakerNote", "NoSuchTag"):
        with pytest.raises(MetadataPolicyError):
            strip_bytes(data, keep=[tag])


def test_heif_output_option_is_clean(data_dir, tmp_path):
    source = data_dir / "metadata" / "samplefilehub.heif"  # small: x265 encoding is slow on 2 cores
    clean = strip_bytes(source.read_bytes(), options=OutputOptions(heic_as="HEIF"))
    assert clean.format == "HEIF"
    target = tmp_path / "out.heic"
    target.write_bytes(clean.data)
    (before,), (after,) = exiftool(source), exiftool(target)
    assert "XMP-x:XMPToolkit" in before or any(k.startswith("XMP") for k in before)
    assert [k for k in after if ":" in k and k.split(":")[0] not in CLEAN_GROUPS | {"QuickTime", "Meta"}] == []
    assert decode(clean.data).size == (640, 426)


def test_pillow_heif_writes_exif_items_when_asked_and_verify_catches_them(upright_jpeg):
    photo = decode(upright_jpeg)
    gps = {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((43, 1), (28, 1), (2, 1))}
    exif = piexif.dump({"GPS": gps})
    data = encode(photo.pixels, format="HEIF", exif=exif)
    assert any("EXIF" in p for p in leftovers(data))
    with pytest.raises(MetadataError):
        verify_clean(data)


@pytest.fixture(scope="module")
def upright_jpeg(data_dir) -> bytes:
    return (data_dir / "metadata" / "sony-cybershot.jpg").read_bytes()


def _clean(data_dir, name: str) -> bytes:
    return strip_bytes((data_dir / "metadata" / name).read_bytes()).data


def _insert_jpeg_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    return jpeg[:2] + bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _insert_png_chunk(png: bytes, ctype: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    chunk = struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))
    return png[:33] + chunk + png[33:]  # right after IHDR


def _planted(data_dir) -> dict[str, tuple[bytes, tuple[str, ...]]]:
    jpeg, png = _clean(data_dir, "canon-ixus.jpg"), _clean(data_dir, "exif.png")
    webp = _clean(data_dir, "flower.webp")
    gps = piexif.dump(
        {"Exif": {piexif.ExifIFD.DateTimeOriginal: b"2001:01:01 00:00:00"}, "GPS": {piexif.GPSIFD.GPSLatitudeRef: b"N"}}
    )
    thumbnail = io.BytesIO()
    Image.new("RGB", (8, 8)).save(thumbnail, "JPEG")
    with_thumb = piexif.dump(
        {
            "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2001:01:01 00:00:00"},
            "1st": {piexif.ImageIFD.XResolution: (72, 1)},
            "thumbnail": thumbnail.getvalue(),
        }
    )
    riff_exif = b"EXIF" + (len(gps) - 6).to_bytes(4, "little") + gps[6:]
    webp_planted = webp[:4] + (len(webp) - 8 + len(riff_exif)).to_bytes(4, "little") + webp[8:] + riff_exif
    mpo = io.BytesIO()
    with Image.open(io.BytesIO(jpeg)) as image:
        image.save(mpo, "MPO", save_all=True, append_images=[image.resize((64, 48))])
    return {
        "jpeg comment": (_insert_jpeg_segment(jpeg, 0xFE, b"Tom Rowan and Sarah Clifton"), ()),
        "jpeg MPF secondary image": (mpo.getvalue(), ()),
        "jpeg xmp": (_insert_jpeg_segment(jpeg, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>"), ()),
        "jpeg unknown APP9": (_insert_jpeg_segment(jpeg, 0xE9, b"anything"), ()),
        "jpeg trailer preview": (jpeg + jpeg, ()),
        "jpeg exif gps beyond allow-list": (_insert_jpeg_segment(jpeg, 0xE1, gps), ("DateTimeOriginal",)),
        "jpeg exif thumbnail beyond allow-list": (_insert_jpeg_segment(jpeg, 0xE1, with_thumb), ("DateTimeOriginal",)),
        "png text": (_insert_png_chunk(png, b"tEXt", b"Author\x00Tom Rowan"), ()),
        "png eXIf": (_insert_png_chunk(png, b"eXIf", gps[6:]), ()),
        "png time": (_insert_png_chunk(png, b"tIME", b"\x07\xe8\x01\x01\x00\x00\x00"), ()),
        "png private chunk": (_insert_png_chunk(png, b"prVt", b"secret"), ()),
        "webp exif": (webp_planted, ()),
    }


def test_verification_fails_closed_on_planted_metadata(data_dir):
    for label, (data, kept) in _planted(data_dir).items():
        assert leftovers(data, kept=kept), label
        with pytest.raises(MetadataError):
            verify_clean(data, kept=kept)


def test_clean_outputs_pass_verification_and_decode_like_the_input(data_dir):
    photo = decode_file(data_dir / "metadata" / "canon-ixus.jpg")
    clean = strip_and_verify(photo)
    assert leftovers(clean.data) == []
    assert np.abs(np.asarray(Image.open(io.BytesIO(clean.data))).astype(int) - photo.pixels).mean() < 1.5


def test_processed_pixels_are_written_and_must_match_the_photo(data_dir):
    photo = decode_file(data_dir / "metadata" / "canon-ixus.jpg")
    inverted = 255 - photo.pixels
    written = np.asarray(Image.open(io.BytesIO(strip_and_verify(photo, inverted).data)))
    assert np.abs(written.astype(int) - inverted).mean() < 1.5
    with pytest.raises(ValueError):
        strip_and_verify(photo, inverted[:-1])
