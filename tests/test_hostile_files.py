"""A hostile-file corpus: every kind of awkward or malicious entry a user's outbound folder can hold, all
dropped at once into one running service (`cloakd run`, as root for the second account), and what became
of each. Each kind ends in one specific place: a correct output in the ready folder (a legitimate photo:
rotated, colour-converted, its hidden payload gone) or the held folder with a reason naming what it is
(a bomb, a FIFO, a loop...). Nothing is published raw, nothing is lost, the service never stops.

The corpus is made here from the test data (Pillow, bytes, os.mkfifo...), never committed. ``KINDS`` is the
table the README's "Hostile files" section shows (test_the_readme_lists_every_kind keeps them in step).
Fast tests below pin the pieces (read_photo, the writer check, the zlib limit, name lengths, log lines).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import stat
import struct
import subprocess
import threading
import time
import tracemalloc
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import piexif
import pillow_heif
import pytest
from PIL import Image, ImageCms

from cloakd.core.errors import ImageTooLargeError
from cloakd.core.photo.decode import decode
from cloakd.core.photo.inspect import inspect
from cloakd.daemon.files import NAME_MAX, fit_name, free_name
from cloakd.daemon.privileges import Account, RefusedFile, read_photo
from cloakd.daemon.service import OneLine
from cloakd.daemon.watch import Candidates, open_for_writing
from cloakd.daemon.worker import reason_path
from conftest import DATA, REPO
from servicekit import Service, files, mount_tmpfs, shared_tmp, user_tree, wait_for, write_config
from test_photo_bad_input import _png_chunk, _save, png_bomb
from test_photo_decode import STORED_FROM_UPRIGHT, _png16

LONG_GOOD = "long-" + "G" * 246 + ".jpg"  # 255 bytes: the longest name a file may have
LONG_BAD = "long-" + "B" * 246 + ".jpg"
NFC, NFD = unicodedata.normalize("NFC", "café.jpg"), unicodedata.normalize("NFD", "café.jpg")
NEWLINE = "line\nbreak.jpg"
MARKER = b"CLOAKD-HOSTILE-PAYLOAD"


@dataclass(frozen=True)
class Kind:
    """One row of the README table: ``ready`` maps each entry put in the outbound folder (relative to it) to
    its output (relative to the ready folder); ``held`` maps each entry to a phrase its reason must hold."""

    kind: str
    ready: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)


KINDS = [
    Kind("decompression bomb (pixels)", held={"bomb-pixels.png": "30000x30000 = 900 MP, above the 100 MP limit"}),
    Kind("decompression bomb (zlib, in a PNG's iCCP chunk)", held={"bomb-zlib.png": "decompression bomb: its iCCP"}),
    Kind("truncated JPEG", held={"truncated.jpg": "truncated"}),
    Kind("empty file", held={"empty.jpg": "empty (0 bytes)"}),
    Kind("text named .jpg", held={"notes.jpg": "not an image"}),
    Kind("polyglot (JPEG + ZIP)", ready={"polyglot.jpg": "polyglot.jpg"}),
    Kind("PNG named .jpg", ready={"misnamed.jpg": "misnamed.png"}),
    Kind("CMYK JPEG", ready={"cmyk.jpg": "cmyk.jpg"}),
    Kind("16-bit PNG", ready={"deep16.png": "deep16.png"}),
    Kind(
        "animated GIF, WebP and PNG", held={n: "animated" for n in ("anim.gif", "anim.webp")} | {"anim.png": "frames"}
    ),
    Kind("multi-page TIFF", held={"pages.tif": "2 frames or pages"}),
    Kind("HEIC holding two images", ready={"multi.heic": "multi.jpg"}),
    Kind("broken ICC profile", ready={"broken-icc.jpg": "broken-icc.jpg"}),
    Kind("EXIF orientation 1-8", ready={f"orient-{n}.jpg": f"orient-{n}.jpg" for n in range(1, 9)}),
    Kind("EXIF directory loop", ready={"exif-loop.jpg": "exif-loop.jpg"}),
    Kind("JPEG with 10 MB of APP segments", ready={"huge-app.jpg": "huge-app.jpg"}),
    Kind("1 x 1 pixel", ready={"one-pixel.png": "one-pixel.png"}),
    Kind("1 x 20000 pixels", ready={"sliver.png": "sliver.png"}),
    Kind("file still being written", ready={"writing.jpg": "writing.jpg"}),
    Kind("FIFO", held={"fifo.jpg": "a named pipe (FIFO), not a photo"}),
    Kind("socket", held={"socket.jpg": "a socket, not a photo"}),
    Kind("device file", held={"device.jpg": "a character device, not a photo"}),
    Kind("symbolic link loop", held={"loop.jpg": "a loop of symbolic links"}),
    Kind("dangling symbolic link", held={"dangling.jpg": "which does not exist"}),
    Kind("symbolic link out of the folder", held={"outside.jpg": "leads to /etc/shadow"}),
    Kind("hard link to another user's file", held={"hardlink.jpg": "a hard link to a file owned by root"}),
    Kind("newline in the name", ready={NEWLINE: NEWLINE}),
    Kind("names differing only in Unicode normalisation", ready={NFC: NFC, NFD: NFD}),
    Kind("name starting with '-'", ready={"-rf.jpg": "-rf.jpg"}),
    Kind("255-byte name", ready={LONG_GOOD: LONG_GOOD}, held={LONG_BAD: "not an image"}),
    Kind("folder named like a photo", ready={"album.jpg/inside.jpg": "album.jpg/inside.jpg"}),
    Kind("read-only ready folder", ready={"locked/photo.jpg": "locked/photo.jpg"}),
    Kind("ready and archive folders on another file system", ready={"elsewhere/photo.jpg": "elsewhere/photo.jpg"}),
]
READY = {k: v for kind in KINDS for k, v in kind.ready.items()}
HELD = {k: v for kind in KINDS for k, v in kind.held.items()}


# --- making the corpus --------------------------------------------------------------------------------------


def _source() -> Image.Image:
    return Image.open(DATA / "metadata" / "DSCN0010.jpg").convert("RGB")


def crop(i: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A distinct small picture (the ledger never cloaks the same content twice, so every good entry differs)."""
    source = _source()
    x, y = (i * 37) % (source.width - size[0]), (i * 53) % (source.height - size[1])
    return source.crop((x, y, x + size[0], y + size[1]))


def jpeg(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, **kwargs)
    return out.getvalue()


def _after_soi(data: bytes, segments: bytes) -> bytes:
    return data[:2] + segments + data[2:]


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def zlib_bomb_png() -> bytes:
    """A small valid PNG whose iCCP chunk inflates to 256 MB of zeros (about 250 kB compressed)."""
    deflate, zeros = zlib.compressobj(9), bytes(2**20)
    bomb = b"".join(deflate.compress(zeros) for _ in range(256)) + deflate.flush()
    png = _save([crop(40, (16, 16))], "PNG")
    iccp = _png_chunk(b"iCCP", b"icc\x00\x00" + bomb)
    return png[:33] + iccp + png[33:]  # after the signature and IHDR


def exif_loop() -> bytes:
    """EXIF whose IFD0 (Orientation 6) names itself as the next directory."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<I", 8)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def polyglot() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("payload.txt", MARKER * 10)
    return jpeg(crop(7)) + archive.getvalue()


def heic_pair() -> bytes:
    heif = pillow_heif.from_pillow(crop(8, (64, 48)))
    heif.add_from_pillow(crop(9, (32, 32)))
    out = io.BytesIO()
    heif.save(out, quality=90)
    return out.getvalue()


def pictures() -> dict[str, bytes]:
    """The corpus entries that are plain files, by name (relative to the outbound folder)."""
    frames = [crop(1, (48, 36)), crop(2, (48, 36))]
    huge = b"".join(_segment(0xE1 + i % 14, (MARKER * 3000)[:65533]) for i in range(160))
    truncated = (DATA / "metadata" / "DSCN0010.jpg").read_bytes()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    made = {
        "bomb-pixels.png": png_bomb(30000, 30000),
        "bomb-zlib.png": zlib_bomb_png(),
        "truncated.jpg": truncated[: len(truncated) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"meeting notes, not a photo\n",
        LONG_BAD: b"not a photo either\n",
        "polyglot.jpg": polyglot(),
        "misnamed.jpg": _save([crop(3)], "PNG"),
        "cmyk.jpg": jpeg(crop(4).convert("CMYK")),
        "deep16.png": _png16(deep16_samples(), 2),
        "anim.gif": _save(frames, "GIF"),
        "anim.webp": _save(frames, "WEBP"),
        "anim.png": _save(frames, "PNG"),
        "pages.tif": _save(frames, "TIFF"),
        "multi.heic": heic_pair(),
        "broken-icc.jpg": jpeg(crop(10), icc_profile=icc[: len(icc) // 3]),
        "exif-loop.jpg": _after_soi(jpeg(upright(11).transpose(STORED_FROM_UPRIGHT[6])), exif_app1(exif_loop())),
        "huge-app.jpg": _after_soi(jpeg(crop(12)), huge),
        "one-pixel.png": _save([crop(13, (1, 1))], "PNG"),
        "sliver.png": _save([Image.new("RGB", (1, 20000), (200, 120, 40))], "PNG"),
        NEWLINE: jpeg(crop(14)),
        NFC: jpeg(crop(15)),
        NFD: jpeg(crop(16)),
        "-rf.jpg": jpeg(crop(17)),
        LONG_GOOD: jpeg(crop(18)),
        "album.jpg/inside.jpg": jpeg(crop(19)),
        "locked/photo.jpg": jpeg(crop(20)),
        "elsewhere/photo.jpg": jpeg(crop(21)),
        "writing.jpg": jpeg(crop(23)),
    }
    for n in range(1, 9):
        stored = upright(30 + n)
        if STORED_FROM_UPRIGHT[n] is not None:
            stored = stored.transpose(STORED_FROM_UPRIGHT[n])
        made[f"orient-{n}.jpg"] = jpeg(stored, exif=piexif.dump({"0th": {piexif.ImageIFD.Orientation: n}}))
    return made


def upright(i: int) -> Image.Image:
    return crop(i, (64, 40))  # not square: a rotation shows in the size


def exif_app1(tiff: bytes) -> bytes:
    return _segment(0xE1, b"Exif\x00\x00" + tiff)


def deep16_samples() -> np.ndarray:
    """Samples that use all 16 bits (not 257 * an 8-bit value)."""
    noise = np.random.default_rng(16).integers(-100, 100, (32, 48, 3))
    return (np.asarray(crop(5, (48, 32))).astype(int) * 257 + noise).clip(0, 65535).astype(np.uint16)


# --- the service on the whole corpus -----------------------------------------------------------------------


def _own(path: Path, owner) -> None:
    os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)


def _stage(staging: Path, owner) -> dict[str, bytes]:
    made = pictures()
    for name, data in made.items():
        if name == "writing.jpg":
            continue
        path = staging / name
        if not path.parent.is_dir():
            path.parent.mkdir()
            _own(path.parent, owner)
        path.write_bytes(data)
        _own(path, owner)
    return made


def _specials(out: Path, base: Path) -> socket.socket:
    """Entries made in place (a create event, no close): FIFO, socket, device, links."""
    os.mkfifo(out / "fifo.jpg")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(out / "socket.jpg"))
    os.mknod(out / "device.jpg", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is: never opened
    os.symlink("loop.jpg", out / "loop.jpg")  # a pair would end as a loop and a dangling link, whichever is held first
    os.symlink("nothere.jpg", out / "dangling.jpg")
    os.symlink("/etc/shadow", out / "outside.jpg")
    theirs = base / "roots-photo.jpg"
    theirs.write_bytes(jpeg(crop(22)))
    theirs.chmod(0o644)
    os.link(theirs, out / "hardlink.jpg")
    return listening


class SlowWriter(threading.Thread):
    """Writes half a photo, keeps the file open (a stalled download) until ``go`` is set, then the rest."""

    def __init__(self, path: Path, data: bytes, owner):
        super().__init__(daemon=True)
        self.path, self.data, self.go = path, data, threading.Event()
        self.file = open(path, "wb")  # noqa: SIM115 - closed by run()
        os.fchown(self.file.fileno(), owner.pw_uid, owner.pw_gid)
        self.file.write(data[: len(data) // 2])
        self.file.flush()

    def run(self) -> None:
        self.go.wait(120)
        self.file.write(self.data[len(self.data) // 2 :])
        self.file.close()


def entries(folder: Path) -> list[str]:
    """Everything but folders under ``folder`` (FIFOs, sockets and devices too), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())


def _done(folders: dict[str, Path], expected: dict[str, str]) -> bool:
    ready, held = set(files(folders["ready"])), set(files(folders["held"]))
    return set(expected.values()) <= ready and {reason_path(Path(n)).name for n in HELD} <= held


@pytest.mark.slow
def test_every_hostile_kind_ends_in_its_specific_place(owner):
    with shared_tmp("cloakd-hostile-") as base:
        folders = user_tree(base, owner)
        staging = user_tree(base, owner, "staging")["staging"]
        locked = user_tree(folders["ready"], owner, "locked")["locked"]
        mounted = [user_tree(folders[f], owner, "elsewhere")["elsewhere"] for f in ("ready", "archive")]
        elsewhere = all(not mount_tmpfs(f, "4m", owner) for f in mounted)
        try:
            _run(base, folders, owner, staging, locked, elsewhere)
        finally:
            for folder in mounted:
                subprocess.run(["umount", str(folder)], capture_output=True)


def _run(base: Path, folders: dict[str, Path], owner, staging: Path, locked: Path, elsewhere: bool) -> None:
    out, ready, held = folders["out"], folders["ready"], folders["held"]
    made = _stage(staging, owner)
    if not elsewhere:  # without mount rights the kind cannot be made here
        (staging / "elsewhere" / "photo.jpg").unlink()
    expected_ready = {k: v for k, v in READY.items() if elsewhere or not k.startswith("elsewhere/")}
    writer = SlowWriter(out / "writing.jpg", made["writing.jpg"], owner)
    writer.start()
    locked.chmod(0o555)
    config = write_config(base / "cloakd.yaml", folders, owner.pw_name, retry={"attempts": 8, "first_delay_seconds": 1})
    with Service(config) as service:
        whole_log = service.log_path.read_text
        service.wait_ready()  # the start-up scan has seen writing.jpg, open and half written
        listening = _specials(out, base)
        for entry in sorted(os.listdir(staging)):  # at once: each file and folder moved in
            os.rename(staging / entry, out / entry)
        refused = f"may not write into {locked} (permission denied)"
        wait_for(lambda: refused in whole_log(), 60, "the read-only ready folder's refusal", service)
        time.sleep(3)  # writing.jpg has been open, unchanged, for longer than stable_seconds
        assert "writing.jpg" not in files(held) and "locked/photo.jpg" in files(out)  # both wait, neither is lost
        writer.go.set()
        writer.join()
        locked.chmod(0o755)
        wait_for(lambda: _done(folders, expected_ready), 90, "every kind in its place", service)
        time.sleep(1.5)  # anything extra would show now
        listening.close()
        assert entries(ready) == sorted(expected_ready.values()), service.log()
        assert entries(held) == sorted(list(HELD) + [reason_path(Path(n)).name for n in HELD])
        assert entries(folders["archive"]) == sorted(expected_ready), service.log()
        assert entries(out) == []
        log = whole_log()
        assert service.proc.poll() is None and service.stop() == 0
    for name, phrase in HELD.items():
        reason = (held / reason_path(Path(name)).name).read_text()
        assert phrase in reason, (name, reason)
    assert len(reason_path(Path(LONG_BAD)).name.encode()) == NAME_MAX
    _check_outputs(ready, made, expected_ready)
    assert "line\\nbreak.jpg" in log and not any(line.startswith("break.jpg") for line in log.splitlines())
    assert "Traceback" not in log and "internal error" not in log
    assert f"{out / 'writing.jpg'} is still open for writing: it waits" in log


def _decoded(ready: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(ready / name))


def _close(a: np.ndarray, b: np.ndarray, levels: float) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(int) - b.astype(int)).mean()) < levels


def _check_outputs(ready: Path, made: dict[str, bytes], expected: dict[str, str]) -> None:
    """What is in the ready folder is the picture as shown, and nothing else of the file."""
    for name in expected.values():
        data = (ready / name).read_bytes()
        assert MARKER not in data and b"PK\x03\x04" not in data and len(data) < 200_000, name
        photo = decode(data, label=name)
        assert not photo.exif and photo.icc_profile is None
    for n in range(1, 9):  # as displayed: the size and the pixels of the upright picture
        assert _close(_decoded(ready, f"orient-{n}.jpg"), np.asarray(upright(30 + n)), 5), n
    assert _close(_decoded(ready, "exif-loop.jpg"), np.asarray(upright(11)), 5)
    cmyk = np.asarray(Image.open(io.BytesIO(made["cmyk.jpg"])).convert("RGB"))
    assert Image.open(ready / "cmyk.jpg").mode == "RGB" and _close(_decoded(ready, "cmyk.jpg"), cmyk, 4)
    deep = np.round(deep16_samples() / 257.0)
    assert _close(_decoded(ready, "deep16.png"), deep, 1)  # 8 bits per sample now, the same picture
    assert Image.open(ready / "multi.jpg").size == (64, 48)  # the primary image only
    assert _close(_decoded(ready, "broken-icc.jpg"), np.asarray(crop(10)), 4)  # the profile ignored
    assert Image.open(ready / "misnamed.png").format == "PNG"
    assert Image.open(ready / "one-pixel.png").size == (1, 1) and Image.open(ready / "sliver.png").size == (1, 20000)
    writing = Image.open(ready / "writing.jpg")
    assert writing.size == Image.open(io.BytesIO(made["writing.jpg"])).size


# --- the pieces, fast -------------------------------------------------------------------------------------


def test_the_readme_lists_every_kind():
    text = (REPO / "README.md").read_text()
    section = text.split("### Hostile files", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [kind.kind for kind in KINDS] and len(KINDS) >= 25


def test_read_photo_names_what_is_not_a_photo_without_opening_it(tmp_path):
    me = Account.current()
    os.mkfifo(tmp_path / "fifo.jpg")  # opening it (without O_NONBLOCK) would block until a writer comes
    os.mknod(tmp_path / "device.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.symlink("loop-b.jpg", tmp_path / "loop-a.jpg")
    os.symlink("loop-a.jpg", tmp_path / "loop-b.jpg")
    os.symlink("gone.jpg", tmp_path / "dangling.jpg")
    (tmp_path / "album.jpg").mkdir()
    os.symlink("album.jpg", tmp_path / "to-folder.jpg")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "socket.jpg"))
        expected = {
            "fifo.jpg": "is a named pipe (FIFO), not a photo",
            "device.jpg": "is a character device, not a photo",
            "socket.jpg": "is a socket, not a photo",
            "loop-a.jpg": "is a loop of symbolic links",
            "dangling.jpg": f"is a symbolic link to {tmp_path / 'gone.jpg'}, which does not exist",
            "to-folder.jpg": f"is a folder ({tmp_path / 'album.jpg'}, through a symbolic link)",
        }
        for name, phrase in expected.items():
            with pytest.raises(RefusedFile, match=phrase.replace("(", r"\(").replace(")", r"\)")):
                read_photo(me, tmp_path / name, [tmp_path])
    with pytest.raises(FileNotFoundError):  # a file removed meanwhile is no refusal: the worker drops the row
        read_photo(me, tmp_path / "removed.jpg", [tmp_path])


def test_a_file_open_for_writing_waits_however_long_its_writer_pauses(tmp_path):
    candidates, me = Candidates(stable_seconds=1), Account.current()
    path = tmp_path / "download.jpg"
    with open(path, "wb") as writer:
        writer.write(b"half a photo")
        writer.flush()
        with open(path, "rb"):  # a reader is no writer
            st = os.stat(path)
            assert open_for_writing({(st.st_dev, st.st_ino)}) == {(st.st_dev, st.st_ino)}
        candidates.note("me", str(path))
        assert candidates.take_stable({"me": me}, now=0) == []
        assert candidates.take_stable({"me": me}, now=600) == []  # ten minutes unchanged, but still open
    assert open_for_writing({(st.st_dev, st.st_ino)}) == set()
    assert [p for _, p, _ in candidates.take_stable({"me": me}, now=1200)] == [str(path)]


def test_special_files_are_taken_to_be_held_and_folders_are_not(tmp_path):
    candidates, me = Candidates(stable_seconds=1), Account.current()
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "album.jpg").mkdir()
    for name in ("fifo.jpg", "album.jpg"):
        candidates.note("me", str(tmp_path / name))
    candidates.take_stable({"me": me}, now=0)
    assert [p for _, p, _ in candidates.take_stable({"me": me}, now=2)] == [str(tmp_path / "fifo.jpg")]
    assert len(candidates) == 0


def test_a_zlib_bomb_in_a_png_chunk_is_refused_without_expanding_it():
    """Found with this corpus: the PNG walk inflated iCCP, zTXt and iTXt chunks whole (256 MB here, from a
    250 kB file; a few such chunks exhaust the memory) before any check."""
    data = zlib_bomb_png()
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match=r"bomb.png is a decompression bomb: its iCCP chunk expands"):
            decode(data, label="bomb.png")
        report = inspect(data, label="bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "decompression bomb" in report.problem and peak < 64 * 2**20, peak
    small = _save([crop(40, (16, 16))], "PNG")
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(64 * 2**20), 9))
    with pytest.raises(
        ImageTooLargeError, match="text.png is a decompression bomb: its zTXt chunk expands beyond 16 MB"
    ):
        decode(small[:33] + ztxt + small[33:], label="text.png")


def test_names_stay_within_255_bytes(tmp_path):
    long = "é" * 125 + ".jpg"  # 254 bytes
    (tmp_path / long).write_bytes(b"")
    taken = free_name(tmp_path / long)
    assert taken.name.endswith("-1.jpg") and len(taken.name.encode()) <= NAME_MAX
    taken.write_bytes(b"")  # a real file name: no error
    note = reason_path(tmp_path / long)
    assert note.name.endswith(".reason.txt") and len(note.name.encode()) <= NAME_MAX
    note.write_bytes(b"")
    assert fit_name("short", ".jpg") == "short.jpg"


def test_a_newline_in_a_name_cannot_make_a_log_line():
    record = logging.LogRecord("cloakd.worker", logging.INFO, __file__, 1, "held %s", ("/out/a\nINFO x: b.jpg",), None)
    assert OneLine("%(levelname)s %(name)s: %(message)s").format(record) == (
        "INFO cloakd.worker: held /out/a\\nINFO x: b.jpg"
    )
