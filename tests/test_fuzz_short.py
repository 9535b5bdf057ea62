"""A short, fixed-seed run of bench/fuzz.py's mutation fuzzing (the long run is the bench's): every mutant of
the seeds (the metadata corpus, a few faces and group photos, a TIFF made from a metadata JPEG) ends in a
clean output or a specific error: no crash, no output that still carries metadata (fuzz.leak, checked apart
from strip's own verifier), no raw warning of Pillow's reaching the caller."""

from __future__ import annotations

import random
import struct
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz  # noqa: E402

PER_FORMAT = 120


@pytest.fixture(scope="module")
def seeds(data_dir) -> dict[str, bytes]:
    return fuzz.seed_files(data_dir)


def test_the_seeds_include_faces_groups_and_a_tiff_with_metadata(seeds):
    assert sum(name.startswith(fuzz.FACES) for name in seeds) == len(fuzz.FACES)
    assert set(fuzz.GROUPS) <= set(seeds)
    from cloakd.core.photo.inspect import inspect

    tiff = inspect(seeds["Canon_40D.tif"])
    assert tiff.format == "TIFF" and {"camera and serial numbers", "dates"} <= {f.topic for f in tiff.findings}


def test_the_leak_check_finds_metadata_where_the_walkers_do_not_look(seeds):
    """fuzz.leak is the judge of the run below, so it must itself find metadata in an output that has some,
    even where the container walkers (which verification shares) see only image structure."""
    from cloakd.core.photo.container import Kind
    from cloakd.core.photo.formats import detect
    from cloakd.core.photo.strip import strip_bytes

    source = seeds["facenet-pytorch_multiface.jpg"]
    clean = strip_bytes(source).data
    assert fuzz.leak(source, clean) == ""
    app13 = source.index(b"\xff\xed")  # the Photoshop/IPTC segment, copied in after the clean file's SOI
    length = int.from_bytes(source[app13 + 2 : app13 + 4], "big")
    assert fuzz.leak(source, clean[:2] + source[app13 : app13 + 2 + length] + clean[2:]).startswith("inspect")
    exif = next(b.payload for b in detect(source).blocks(source) if b.kind is Kind.EXIF)
    # the EXIF block hidden in an EXP segment (0xFFDF: hierarchical-JPEG structure to the walker, skipped by
    # Pillow): only the bytes tell
    hidden = b"\xff\xdf" + (len(exif) + 2).to_bytes(2, "big") + exif
    assert fuzz.leak(source, clean[:2] + hidden + clean[2:]) == "bytes of the input's APP1 Exif"


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
def test_mutants_end_clean_or_in_a_specific_error(seeds, fmt):
    corpus = [(data, fuzz.pixel_data(data, fmt)) for name, data in seeds.items() if fuzz.format_of(name) == fmt]
    everything = list(seeds.values())
    rng = random.Random(0)
    outcomes: dict[str, list[str]] = {}
    for i in range(PER_FORMAT):
        data, ranges = corpus[i % len(corpus)]
        mutant = fuzz.make_mutant(data, fmt, ranges, everything, rng)
        outcome, detail = fuzz.run_one(mutant, timeout=0)  # no alarm here: the suite has its own timeouts
        outcomes.setdefault(outcome, []).append(detail)
    for failure in ("crash", "leak", "warning"):
        assert failure not in outcomes, outcomes[failure][:3]
    assert outcomes.get("clean"), outcomes.keys()  # the mutants reach the writers and the leak check
    assert outcomes.get("refused"), outcomes.keys()


# Regressions found by bench/fuzz.py, each with its minimised input made here.


def _box(btype: bytes, body: bytes, version: int | None = None) -> bytes:
    body = body if version is None else bytes([version, 0, 0, 0]) + body
    return struct.pack(">I4s", 8 + len(body), btype) + body


def _heif(iloc_items: bytes, item_count: int, infe: bytes = b"") -> bytes:
    """ftyp + meta with an iloc box of 0-byte offset, length and base fields (version 1), and ``infe`` boxes."""
    iloc = _box(b"iloc", b"\x00\x00" + struct.pack(">H", item_count) + iloc_items, version=1)
    iinf = _box(b"iinf", struct.pack(">H", 1) + infe, version=0) if infe else b""
    return _box(b"ftyp", b"heic\x00\x00\x00\x00mif1heic") + _box(b"meta", iinf + iloc, version=0)


def test_a_heif_item_with_thousands_of_empty_extents_is_damage_not_gigabytes():
    """A 29 kB HEIF mutant took the HEIF walker 4 s and 1.4 GB: its iloc box gave items 65,535 extents each,
    with fields of 0 bytes, so they took no room in the box; libheif refuses more than 32 per item."""
    from cloakd.core.errors import TruncatedImageError
    from cloakd.core.photo.heif import walk
    from cloakd.core.photo.inspect import inspect
    from cloakd.core.photo.strip import strip_bytes

    data = _heif(struct.pack(">HHHH", 1, 0, 0, 0xFFFF), 1)  # item 1: 65,535 extents of nothing
    assert "iloc box: item 1 has over 32 extents" in [b.name for b in walk(data)]
    assert inspect(data).format == "HEIF"
    with pytest.raises(TruncatedImageError):
        strip_bytes(data)


def test_an_exif_item_of_overlapping_extents_is_no_bigger_than_the_file():
    """Each 0-length extent is "to the end of the file": 32 of them made an item 32 times the file's size
    (and 65,535 of them, gigabytes)."""
    from cloakd.core.photo.container import Kind
    from cloakd.core.photo.heif import walk

    infe = _box(b"infe", struct.pack(">HH", 1, 0) + b"Exif\x00", version=2)
    data = _heif(struct.pack(">HHHH", 1, 0, 0, 32), 1, infe)
    exif = [b for b in walk(data) if b.kind is Kind.EXIF]
    assert len(exif) == 1 and 0 < len(exif[0].payload) <= len(data)


def test_a_tiff_whose_next_directory_has_no_size_is_damaged_not_a_crash():
    """Five TIFF mutants escaped as Pillow's TypeError("Missing dimensions"): the next-directory pointer of IFD0
    led to a directory without ImageWidth, which Pillow reads when it counts the pages; and a warning of
    Pillow's about a further directory, read while counting, reached stderr."""
    import io

    from PIL import Image

    from cloakd.core.errors import TruncatedImageError
    from cloakd.core.photo.inspect import inspect
    from cloakd.core.photo.strip import strip_bytes

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="TIFF")
    tiff = out.getvalue()  # little-endian; IFD0's next-directory pointer is 0
    ifd0 = struct.unpack("<I", tiff[4:8])[0]
    next_at = ifd0 + 2 + 12 * struct.unpack("<H", tiff[ifd0 : ifd0 + 2])[0]
    sizeless = struct.pack("<HHHIHHI", 1, 262, 3, 1, 2, 0, 0)  # one entry (Photometric = RGB), no next directory
    data = tiff[:next_at] + struct.pack("<I", len(tiff)) + tiff[next_at + 4 :] + sizeless
    # and a next directory, IFD0's entries again plus an ImageDescription claiming 16 MB: Pillow warned while
    # counting the pages
    count = struct.unpack("<H", tiff[ifd0 : ifd0 + 2])[0]
    sized = struct.pack("<H", count + 1) + tiff[ifd0 + 2 : next_at] + struct.pack("<HHII", 270, 2, 0x00FFFFF0, 8)
    sized += struct.pack("<I", 0)
    warned = tiff[:next_at] + struct.pack("<I", len(tiff)) + tiff[next_at + 4 :] + sized
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning may reach the caller
        for damaged, said in ((data, "further image directory"), (warned, "Tag data larger than file")):
            assert inspect(damaged).format == "TIFF"
            with pytest.raises(TruncatedImageError, match=f"damaged TIFF file.*{said}"):
                strip_bytes(damaged, label="pages.tif")
