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


def _album(data_dir, tmp_path):
    """A folder as people have them: a photo with an odd name, a text file named like a photo, a sub-folder,
    a link to a photo outside the folder, a link to a folder outside it, and a clean/ folder inside it that
    an earlier run wrote (which must not be read again)."""
    meta = data_dir / "metadata"
    album = tmp_path / "album"
    (album / "day2").mkdir(parents=True)
    (album / "clean").mkdir()
    (album / "IMG_1.dat").write_bytes((meta / "Canon_40D.jpg").read_bytes())  # a JPEG by its content
    (album / "notes.jpg").write_text("not a photo")
    (album / "day2" / "beach.png").write_bytes((meta / "exif.png").read_bytes())
    (album / "clean" / "IMG_1.jpg").write_bytes((meta / "Nikon_D70.jpg").read_bytes())
    (album / "outside.jpg").symlink_to(meta / "Kodak_CX7530.jpg")
    (album / "elsewhere").symlink_to(meta, target_is_directory=True)
    return album


def test_strip_takes_a_folder_by_content_and_ends_with_a_summary(data_dir, tmp_path, capsys):
    album = _album(data_dir, tmp_path)
    out = album / "clean"
    assert main(["strip", str(album), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["IMG_1-1.jpg", "IMG_1.jpg"]  # the earlier run's is kept
    assert inspect((out / "IMG_1-1.jpg").read_bytes()).clean
    assert captured.out.splitlines()[-1].startswith("1 photo: 1 stripped, 0 failed, ")
    assert f"skipping {album / 'outside.jpg'}: a link to {data_dir / 'metadata' / 'Kodak_CX7530.jpg'}" in captured.err


def test_strip_recursive_mirrors_sub_folders_and_never_leaves_the_folder(data_dir, tmp_path, capsys):
    album = _album(data_dir, tmp_path)
    out = album / "clean"
    assert main(["strip", str(album), "--recursive", "--out", str(out)]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    # the earlier run's clean/IMG_1.jpg is not read again (no clean/clean/), nothing came through the links
    assert written == ["IMG_1-1.jpg", "IMG_1.jpg", "day2/beach.png"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("2 photos: 2 stripped, 0 failed, ")


def test_strip_says_what_is_wrong_with_a_folder(data_dir, tmp_path, capsys):
    album = _album(data_dir, tmp_path)
    assert main(["strip", str(album), "--out", str(album)]) == 2
    assert f"--out {album} is the folder of photos to read" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert main(["strip", str(empty), str(data_dir / "metadata" / "Canon_40D.jpg"), "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert f"{empty}: no photo in this folder (--recursive also looks in its sub-folders)" in captured.err
    assert captured.out.splitlines()[-1].startswith("1 photo: 1 stripped, 0 failed, ")  # a folder is no photo
