"""`inspect` tells what exiftool (the independent oracle) finds: places, cameras, serials, owners, dates,
thumbnails, captions and comments; and the CLI says it in plain words or JSON."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from cloakd.core.photo.inspect import inspect
from cloakd.core.photo.report import CAMERA, LOCATION, PREVIEWS
from cloakd.core.photo.strip import strip_bytes
from cloakd.daemon.cli import main

EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool missing: scripts/test.sh installs it")


@pytest.fixture(scope="module")
def corpus(data_dir) -> dict[str, tuple[dict, object]]:
    """name -> (exiftool -n facts, our report) for the metadata corpus and the captioned group photo."""
    files = sorted((data_dir / "metadata").iterdir()) + [data_dir / "groups" / "facenet-pytorch_multiface.jpg"]
    run = subprocess.run([EXIFTOOL, "-j", "-a", "-G1", "-n", *map(str, files)], capture_output=True, check=True)
    facts = {d["SourceFile"].rsplit("/", 1)[1]: d for d in json.loads(run.stdout)}
    return {p.name: (facts[p.name], inspect(p.read_bytes(), label=p.name)) for p in files}


def _values(report) -> str:
    return "\n".join(f.value for f in report.findings)


def test_gps_positions_match_exiftool(corpus):
    with_gps = {name: (facts, report) for name, (facts, report) in corpus.items() if "Composite:GPSLatitude" in facts}
    assert len(with_gps) == 6
    for name, (facts, report) in with_gps.items():
        position = next(f.value for f in report.findings if f.topic == LOCATION and f.what == "GPS position")
        lat_text, lon_text = position.split(", ")
        lat = float(lat_text.split()[0]) * (-1 if lat_text.endswith("S") else 1)
        lon = float(lon_text.split()[0]) * (-1 if lon_text.endswith("W") else 1)
        assert lat == pytest.approx(facts["Composite:GPSLatitude"], abs=1e-5), name
        assert lon == pytest.approx(facts["Composite:GPSLongitude"], abs=1e-5), name


def test_cameras_serials_owners_dates_and_captions_are_reported(corpus):
    wanted = (
        "IFD0:Make",
        "IFD0:Model",
        "ExifIFD:DateTimeOriginal",
        "IPTC:Caption-Abstract",
        "IPTC:By-line",
        "IPTC:Keywords",
        "XMP-dc:Creator",
        "File:Comment",
        "PNG:Comment",
        "IFD0:Copyright",
        "IFD0:Artist",
    )
    checked = 0
    for name, (facts, report) in corpus.items():
        text = _values(report)
        for key, value in facts.items():
            tag = key.split(":", 1)[-1]
            is_identifier = any(word in tag for word in ("Serial", "Owner"))
            if (key in wanted or is_identifier) and str(value).strip():
                expected = "; ".join(map(str, value)) if isinstance(value, list) else str(value).strip()
                assert expected in text, f"{name}: {key} = {expected!r} not reported"
                checked += 1
    assert checked >= 80  # guards against a vacuous pass (86 facts on this corpus)


def test_serial_numbers_and_owner_names_are_flagged_as_camera_facts(corpus):
    for name, tag in [
        ("xmp_test.jpg", "ExifIFD:SerialNumber"),
        ("xmp_test.jpg", "ExifIFD:LensSerialNumber"),
        ("Panasonic_DMC-FZ30.jpg", "Panasonic:InternalSerialNumber"),
        ("canon-ixus.jpg", "Canon:OwnerName"),
        ("flower.webp", "Canon:OwnerName"),
    ]:
        facts, report = corpus[name]
        assert any(f.topic == CAMERA and f.value == str(facts[tag]) for f in report.findings), (name, tag)


def test_embedded_previews_are_reported(corpus):
    with_thumbnail = [n for n, (facts, _) in corpus.items() if "IFD1:ThumbnailImage" in facts]
    assert len(with_thumbnail) >= 21
    for name in with_thumbnail + ["36-memory_error.jpg"]:  # the Casio maker note also holds a preview
        _, report = corpus[name]
        assert any(f.topic == PREVIEWS for f in report.findings), name
    casio = [f for f in corpus["36-memory_error.jpg"][1].findings if f.topic == PREVIEWS]
    assert len(casio) >= 2


def test_sizes_are_as_displayed(corpus):
    _, report = corpus["portrait_6.jpg"]
    assert report.size == (450, 600)
    facts, report = corpus["IMG_5195.HEIC"]
    assert report.size == (facts["File:ImageWidth"], facts["File:ImageHeight"])


def test_a_stripped_file_reports_clean(data_dir):
    clean = strip_bytes((data_dir / "metadata" / "DSCN0010.jpg").read_bytes())
    assert inspect(clean.data).clean


def test_cli_inspect_speaks_plain_words(data_dir, capsys):
    path = data_dir / "metadata" / "DSCN0010.jpg"
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "location" in out and "GPS position: 43.46" in out and "11.88" in out
    assert "NIKON COOLPIX P6000" in out and "thumbnail" in out and "taken: 2008:10:22 16:28:39" in out


def test_cli_inspect_json(data_dir, capsys):
    paths = [data_dir / "metadata" / "iptc.jpg", data_dir / "groups" / "facenet-pytorch_multiface.jpg"]
    assert main(["inspect", "--json", *map(str, paths)]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in reports] == list(map(str, paths))
    assert any("Budapest" in f["value"] for f in reports[0]["findings"])
    assert any(f["what"] == "caption" and "Jennifer Aniston" in f["value"] for f in reports[1]["findings"])
