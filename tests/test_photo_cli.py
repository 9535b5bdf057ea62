"""`cloakd strip`: clean copies in --out, never overwriting, HEIC written as JPEG, allow-list, bad --keep."""

from __future__ import annotations

import hashlib

from PIL import Image

from cloakd.core.photo.inspect import inspect
from cloakd.daemon.cli import main


def test_strip_writes_clean_copies_without_overwriting(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    squatter = out / "DSCN0010.jpg"
    squatter.write_bytes(b"someone else's file")
    sources = [data_dir / "metadata" / "DSCN0010.jpg", data_dir / "metadata" / "samplefilehub.heif"]
    assert main(["strip", *map(str, sources), "--out", str(out)]) == 0
    assert main(["strip", str(sources[0]), "--out", str(out)]) == 0
    assert squatter.read_bytes() == b"someone else's file"
    written = sorted(p.name for p in out.iterdir())
    assert written == ["DSCN0010-1.jpg", "DSCN0010-2.jpg", "DSCN0010.jpg", "samplefilehub.jpg"]
    for name in ("DSCN0010-1.jpg", "DSCN0010-2.jpg", "samplefilehub.jpg"):
        assert inspect((out / name).read_bytes()).clean
        assert Image.open(out / name).format == "JPEG"
    assert "samplefilehub.heif -> " in capsys.readouterr().out


def test_strip_keeps_only_the_allow_listed_tag(data_dir, tmp_path, capsys):
    source = data_dir / "metadata" / "DSCN0010.jpg"
    assert main(["strip", str(source), "--out", str(tmp_path), "--keep", "DateTimeOriginal"]) == 0
    assert "kept DateTimeOriginal" in capsys.readouterr().out
    report = inspect((tmp_path / "DSCN0010.jpg").read_bytes())
    assert [(f.what, f.value) for f in report.findings] == [("taken", "2008:10:22 16:28:39")]


def test_a_bad_keep_tag_stops_before_any_file_is_touched(data_dir, tmp_path, capsys):
    source = data_dir / "metadata" / "DSCN0010.jpg"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    out = tmp_path / "never"
    assert main(["strip", str(source), "--out", str(out), "--keep", "GPSLatitude"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GPSLatitude" in err[0]
    assert not out.exists()
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
