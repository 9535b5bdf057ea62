"""Commands over many files show progress: one line redrawn in place on a terminal (no result line cut by
it), plain lines otherwise."""

from __future__ import annotations

import os
import pty
import re
import subprocess

from conftest import CLOAKD

NAMES = ("BlueSquare.jpg", "flower.webp", "exif.png", "DSCN0010.jpg", "canon-ixus.jpg")


def _strip(data_dir, out, **streams) -> subprocess.CompletedProcess:
    photos = [str(data_dir / "metadata" / n) for n in NAMES]
    return subprocess.run([str(CLOAKD), "strip", *photos, "--out", str(out)], timeout=120, **streams)


def test_plain_progress_lines_when_not_on_a_terminal(data_dir, tmp_path):
    run = _strip(data_dir, tmp_path / "out", capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert [re.sub(r", .*", "", line) for line in lines] == [f"cloakd: strip: {n} of 5" for n in range(1, 6)]
    assert re.fullmatch(r"cloakd: strip: 1 of 5, \d+:\d\d elapsed, about \d+:\d\d left", lines[0])
    *results, summary = run.stdout.splitlines()
    assert "\r" not in run.stderr and len(results) == 5
    assert re.fullmatch(r"5 photos: 5 stripped, 0 failed, \d+\.\d s", summary)  # the batch's one summary line


def test_a_live_line_on_a_terminal(data_dir, tmp_path):
    controller, terminal = pty.openpty()
    try:
        run = _strip(data_dir, tmp_path / "out", stdout=subprocess.PIPE, stderr=terminal)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert run.returncode == 0
    text = shown.decode()
    assert "\r\x1b[Kstrip: 0 of 5, 0:00 elapsed, time left not known yet" in text
    assert "\r\x1b[Kstrip: 5 of 5" in text and text.endswith("\r\x1b[K")  # erased at the end
    *results, summary = run.stdout.decode().splitlines()
    assert len(results) == 5 and all(" -> " in line and "\x1b" not in line for line in results)
    assert summary.startswith("5 photos: 5 stripped, 0 failed") and "\x1b" not in summary
