"""End to end: the real service (`cloakd run`, a subprocess, running as root for the second account) on
temporary folders with real photos. Every good photo ends in ready exactly once, every bad one in held with
a reason, every original is accounted for: through slow copies, renames, 200 files at once, kill -9, a full
disk, a reload and a processing window."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from cloakd.core.photo.decode import decode
from cloakd.core.protect import MOVED_MARGIN
from cloakd.daemon.ledger import DONE, Ledger
from cloakd.daemon.space import Pause
from cloakd.daemon.worker import REASON_SUFFIX
from conftest import CLOAKD, DATA
from servicekit import (
    Service,
    bad_files,
    copy_as,
    files,
    fill_up,
    resize,
    shared_tmp,
    small_disk,
    tiny_photos,
    user_tree,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

FACES = [DATA / "faces" / "Bill_Gates" / "Bill_Gates_0001.jpg", DATA / "faces" / "Halle_Berry" / "Halle_Berry_0002.jpg"]


@pytest.fixture
def site(owner):
    with shared_tmp("cloakd-e2e-") as base:
        yield base, user_tree(base, owner)


def outputs_named(names: list[str]) -> list[str]:
    """Output names for originals: HEIC/HEIF become JPEG (the default heic_as), others keep their format."""
    out = []
    for name in names:
        stem, ext = name.rsplit(".", 1)
        out.append(stem + (".jpg" if ext.lower() in ("heic", "heif", "jpg", "jpeg") else "." + ext.lower()))
    return sorted(out)


def accounted(folders: dict[str, Path], total: int) -> bool:
    """Every original is in the archive or in held/ (its reason file beside it)."""
    held = [n for n in files(folders["held"]) if not n.endswith(REASON_SUFFIX)]
    return len(files(folders["archive"])) + len(held) >= total


def test_photos_arrive_every_way_and_each_ends_in_one_place(site, owner, analyzer):
    base, folders = site
    out = folders["out"]
    config = write_config(base / "cloakd.yaml", folders, owner.pw_name)
    with Service(config, env={"WATCHDOG_USEC": "2000000"}) as service:
        service.wait_ready()
        for face in FACES:
            copy_as(face, out / face.name, owner)
        good = [f.name for f in FACES]
        for name in ("BlueSquare.jpg", "flower.webp", "exif.png", "samplefilehub.heif"):
            copy_as(DATA / "metadata" / name, out / name, owner)
            good.append(name)
        copy_as(DATA / "metadata" / "BlueSquare.jpg", out / "BlueSquare-again.jpg", owner)  # same content
        bad = bad_files(out, owner)
        os.symlink("/etc/shadow", out / "shadow.jpg")
        bad.append("shadow.jpg")
        data = (DATA / "metadata" / "DSCN0010.jpg").read_bytes()

        def slow_copy():  # 3 s, in pieces, pausing less than stable_seconds between them
            with open(out / "slow.jpg", "wb") as f:
                for i in range(0, len(data), len(data) // 6 + 1):
                    f.write(data[i : i + len(data) // 6 + 1])
                    f.flush()
                    time.sleep(0.5)
            os.chown(out / "slow.jpg", owner.pw_uid, owner.pw_gid)
            other = (DATA / "metadata" / "olympus-c960.jpg").read_bytes()
            (out / "renamed.jpg.part").write_bytes(other[: len(other) // 2])  # a download in progress...
            time.sleep(1.5)
            (out / "renamed.jpg.part").write_bytes(other)
            os.rename(out / "renamed.jpg.part", out / "renamed.jpg")  # ...finished and renamed
            (out / "abandoned.jpg.crdownload").write_bytes(data[:1000])

        writer = threading.Thread(target=slow_copy)
        writer.start()
        good += ["slow.jpg", "renamed.jpg"]
        writer.join()
        wait_for(lambda: accounted(folders, len(good) + len(bad) + 1), 120, "every photo accounted for", service)
        time.sleep(1.5)  # anything extra would show now
        assert files(folders["ready"]) == outputs_named(good), service.log()
        assert files(folders["archive"]) == sorted(good + ["BlueSquare-again.jpg"])
        assert files(folders["held"]) == sorted(bad + [b + REASON_SUFFIX for b in bad])
        assert files(out) == ["abandoned.jpg.crdownload"]  # a temporary name is never taken
        for name in files(folders["ready"]):
            path = folders["ready"] / name
            assert path.stat().st_uid == owner.pw_uid
            photo = decode(path.read_bytes(), label=name)
            assert photo.exif is None or photo.exif == b""  # no metadata kept by default
        for face in FACES:  # cloaked: the face's features moved, in identity gaps (stripping alone: ~0.03-0.08)
            before, after = decode(face.read_bytes()).rgb, decode((folders["ready"] / face.name).read_bytes()).rgb
            found = analyzer.analyse(before)
            moved = analyzer.describe_chips(analyzer.chips(after, found)) - np.stack([f.descriptor for f in found])
            shifts = np.linalg.norm(moved, axis=1) / analyzer.extractor.identity_gap
            assert before.shape == after.shape and len(found) == 1 and shifts[0] >= MOVED_MARGIN, shifts
        assert "leads to /etc/shadow" in (folders["held"] / ("shadow.jpg" + REASON_SUFFIX)).read_text()
        assert "not an image" in (folders["held"] / ("notes.jpg" + REASON_SUFFIX)).read_text()
        assert b"root:" not in b"".join((folders["ready"] / n).read_bytes() for n in files(folders["ready"]))
        messages = service.receive()
        assert any(m.startswith("READY=1") for m in messages) and any("WATCHDOG=1" in m for m in messages)
        assert any("STATUS=" in m and "done" in m for m in messages)
        status = subprocess.run(
            [str(CLOAKD), "status", "--config", str(config)], capture_output=True, text=True, timeout=60
        )
        line = next(row for row in status.stdout.splitlines() if row.startswith("bee "))
        done = len(good) + 1
        assert line.split()[1:5] == ["0", "0", str(done), str(len(bad))], status.stdout
        assert "(not chosen yet)" not in line
        assert service.stop() == 0
        assert any("STOPPING=1" in m for m in service.messages)


def test_two_hundred_files_at_once(site, owner):
    base, folders = site
    staging = base / "staging"
    staging.mkdir()
    names = tiny_photos(staging, owner, 197)
    config = write_config(base / "cloakd.yaml", folders, owner.pw_name)
    with Service(config) as service:
        service.wait_ready()
        for name in names:  # all at once: a move of each finished file
            os.rename(staging / name, folders["out"] / name)
        wait_for(lambda: accounted(folders, len(names)), 240, "200 photos", service)
        assert files(folders["ready"]) == outputs_named(names)
        assert files(folders["archive"]) == sorted(names) and files(folders["held"]) == []
        assert service.stop() == 0


def test_kill_9_in_the_middle_and_restart(site, owner):
    base, folders = site
    names = tiny_photos(folders["out"], owner, 40) + [FACES[0].name]
    copy_as(FACES[0], folders["out"] / FACES[0].name, owner)
    config = write_config(base / "cloakd.yaml", folders, owner.pw_name, stop_timeout_seconds=1)
    with Service(config) as service:
        service.wait_ready()
        wait_for(lambda: len(files(folders["ready"])) >= 8, 120, "the first outputs", service)
        service.kill9()
    assert len(files(folders["archive"])) < len(names)  # it was killed in the middle
    with Service(config) as service:
        service.wait_ready()
        wait_for(lambda: accounted(folders, len(names)), 180, "all photos after the restart", service)
        time.sleep(1.5)
        assert files(folders["ready"]) == outputs_named(names)  # exactly once each, no temporary files
        assert files(folders["archive"]) == sorted(names) and files(folders["out"]) == []
        # SIGTERM while a face is being cloaked (seconds): abandoned within stop_timeout_seconds, redone later
        copy_as(FACES[1], folders["out"] / FACES[1].name, owner)
        wait_for(lambda: f"queued {folders['out'] / FACES[1].name}" in service.log(), 30, "the face photo", service)
        time.sleep(0.5)
        started = time.monotonic()
        assert service.stop() == 0 and time.monotonic() - started < 10
        assert "abandoned at stop" in service.log() and FACES[1].name not in files(folders["ready"])
    names.append(FACES[1].name)
    with Service(config) as service:
        service.wait_ready()
        wait_for(lambda: accounted(folders, len(names)), 60, "the abandoned photo", service)
        assert files(folders["ready"]) == outputs_named(names) and service.stop() == 0
    ledger = Ledger(base / "state", readonly=True)
    assert sorted(r.state for r in ledger.rows()) == [DONE] * len(names)
    attempts = {Path(r.path).name: r.attempts for r in ledger.rows()}
    assert attempts[FACES[1].name] == 1 and max(attempts.values()) <= 2  # an orderly stop does not count
    ledger.close()


def _paused(config: Path) -> tuple[list[str], list[dict]]:
    """What `cloakd status` says is paused: its text lines and its JSON."""
    command = [str(CLOAKD), "status", "--config", str(config)]
    text = subprocess.run(command, capture_output=True, text=True, timeout=60)
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    return [line for line in text.stdout.splitlines() if line.startswith("paused: ")], json.loads(as_json.stdout)[
        "paused"
    ]


def test_a_full_disk_pauses_the_work_says_why_and_resumes_by_itself(site, owner):
    """The ready folder fills mid-burst, then the state directory (the ledger) too: the service pauses (no try
    counted, nothing held, no partial file), says why once in its log and in `cloakd status`, lets the photos
    that arrive meanwhile wait, and resumes by itself as space is freed: each photo delivered exactly once."""
    base, folders = site
    ready, out, state = folders["ready"], folders["out"], base / "state"
    (base / "staging").mkdir()
    crops = [n for n in tiny_photos(base / "staging", owner, 27) if n.startswith("crop")]
    burst, later = crops[:24], crops[24:]
    # two attempts only: a full disk that counted as a try would soon hold the photos
    config = write_config(base / "cloakd.yaml", folders, owner.pw_name, retry={"attempts": 2, "first_delay_seconds": 1})
    whole_log = config.with_suffix(".log")
    with small_disk(ready, "48k", owner), small_disk(state, "16m"), Service(config) as service:
        service.wait_ready()
        for name in burst:
            os.rename(base / "staging" / name, out / name)
        wait_for(lambda: "paused: the ready folder of bee" in whole_log.read_text(), 60, "the ready pause", service)
        text, as_json = _paused(config)
        assert len(text) == 1 and text[0].startswith(f"paused: the ready folder of bee ({ready}) is full ("), text
        assert "bee's photos wait until space is freed" in text[0]
        assert [(p["user"], p["path"], p["by"]) for p in as_json] == [("bee", str(ready), "service")]
        time.sleep(2)  # any further try against the full folder would show now
        delivered = files(ready)
        assert 0 < len(delivered) < len(burst)  # it filled mid-burst
        for name in delivered:  # what is there is complete, and no temporary file is left
            decode((ready / name).read_bytes(), label=name)
        assert delivered == outputs_named(files(folders["archive"])) and files(folders["held"]) == []
        assert sorted(files(out) + files(folders["archive"])) == sorted(burst)  # the rest waits in outbound

        wal = state / "ledger.sqlite3-wal"
        assert wal.stat().st_size < 1000 * 4120  # before SQLite's first checkpoint: the next step needs space
        filler = fill_up(state)
        resize(ready, "4m")  # the ready folder has space again, but now the ledger cannot record anything
        wait_for(lambda: "paused: the state directory" in whole_log.read_text(), 60, "the ledger pause", service)
        for name in later:  # arrive while the ledger is full: they wait
            os.rename(base / "staging" / name, out / name)
        time.sleep(3)
        text, as_json = _paused(config)
        assert text == [f"paused: {Pause(**as_json[0]).text()}"] and text[0].startswith(
            f"paused: the state directory ({state}) is full ("
        ), text
        assert [(p["user"], p["by"]) for p in as_json] == [(None, "status")]  # it cannot record its own pause
        assert all(f"queued {out / name}" not in whole_log.read_text() for name in later)

        filler.unlink()
        wait_for(lambda: accounted(folders, len(crops)), 90, "delivery after space was freed", service)
        time.sleep(1.5)
        assert files(ready) == outputs_named(crops)  # exactly once each, no temporary file
        assert files(folders["archive"]) == sorted(crops) and files(folders["held"]) == [] and files(out) == []
        log = whole_log.read_text()
        assert log.count("paused: the ready folder of bee") == 1 and log.count("paused: the state directory") == 1
        assert "resumed: the ready folder of bee" in log and "resumed: the state directory" in log
        assert "retry in" not in log  # no back-off retries: a pause
        assert _paused(config) == ([], [])
        assert service.stop() == 0
        ledger = Ledger(state, readonly=True)
        assert [(r.state, r.attempts) for r in ledger.rows()] == [(DONE, 1)] * len(crops)  # no try counted
        ledger.close()


@pytest.mark.parametrize("before", ["first start", "after a clean stop"])
def test_a_service_started_with_a_full_state_directory_waits_for_space_then_starts(site, owner, before):
    """The state directory is full before the service starts (its first start, or a restart after a clean stop,
    where SQLite must create the WAL's -shm file and fails with an I/O error, not SQLITE_FULL): it does not
    exit (systemd would restart it every 10 s, loading the models each time); it says why, in its log, in
    systemd's STATUS= (while still starting: no READY=1, EXTEND_TIMEOUT_USEC) and in `cloakd status`, waits,
    and starts by itself once space is freed, taking the photo that arrived meanwhile."""
    base, folders = site
    state = base / "state"
    (base / "staging").mkdir()
    name = tiny_photos(base / "staging", owner, 1)[0]
    config = write_config(base / "cloakd.yaml", folders, owner.pw_name)
    whole_log = config.with_suffix(".log")
    with small_disk(state, "16m"):
        if before == "after a clean stop":
            with Service(config) as service:
                service.wait_ready()
                assert service.stop() == 0
            assert sorted(p.name for p in state.iterdir() if p.name.startswith("ledger")) == ["ledger.sqlite3"]
        filler = fill_up(state)
        with Service(config) as service:
            wait_for(lambda: whole_log.read_text().count("paused: the state directory") == 1, 60, "the pause", service)
            os.rename(base / "staging" / name, folders["out"] / name)
            time.sleep(3)
            assert service.proc.poll() is None, service.log()  # still there, waiting
            said = service.receive()
            assert any("STATUS=paused: the state directory" in m for m in said), said
            assert any("EXTEND_TIMEOUT_USEC=" in m for m in said) and not any("READY=1" in m for m in said), said
            shown = subprocess.run([str(CLOAKD), "status", "--config", str(config)], capture_output=True, text=True)
            if before == "first start":  # no ledger yet: the pause, and every count 0
                assert f"paused: the state directory ({state}) is full (" in shown.stdout, shown.stdout + shown.stderr
            else:  # SQLite cannot even read the ledger without a little space
                assert shown.returncode == 2 and "its file system is full" in shown.stderr, shown.stderr
            assert files(folders["ready"]) == [] and files(folders["out"]) == [name]
            filler.unlink()
            service.wait_ready()
            wait_for(lambda: accounted(folders, 1), 90, "delivery after space was freed", service)
            assert files(folders["ready"]) == outputs_named([name])
            log = whole_log.read_text()
            assert log.count("paused: the state directory") == 1 and "resumed: the state directory" in log, log
            shown = subprocess.run([str(CLOAKD), "status", "--config", str(config), "--json"], capture_output=True)
            assert json.loads(shown.stdout)["service"]["running"] is True  # its start recorded once there was space
            assert service.stop() == 0


def test_a_service_stopped_while_it_waits_for_space_at_start_stops_cleanly(site, owner):
    base, folders = site
    config = write_config(base / "cloakd.yaml", folders, owner.pw_name)
    with small_disk(base / "state", "16m"):
        fill_up(base / "state")
        with Service(config) as service:
            wait_for(lambda: "paused: the state directory" in service.log(), 60, "the pause", service)
            assert service.stop() == 0 and "stopped while starting" in service.log(), service.log()


def test_processing_window_and_reload(site, owner):
    base, folders = site
    later = datetime.now() + timedelta(hours=3)
    window = f"{later:%H}:00-{(later + timedelta(hours=1)):%H}:00"  # not now
    config = write_config(base / "cloakd.yaml", folders, owner.pw_name, processing_windows=[window])
    extra = user_tree(base, owner, "phone")["phone"]
    with Service(config) as service:
        service.wait_ready()
        copy_as(DATA / "metadata" / "flower.webp", folders["out"] / "flower.webp", owner)
        wait_for(lambda: "queued" in service.log() and "flower.webp" in service.log(), 30, "queued", service)
        time.sleep(2)
        assert files(folders["ready"]) == []  # outside the window: queued, not processed
        status = subprocess.run([str(CLOAKD), "status", "--config", str(config)], capture_output=True, text=True)
        assert next(r for r in status.stdout.splitlines() if r.startswith("bee ")).split()[1] == "1"

        config.write_text(config.read_text().replace("stable_seconds: 1", "stable_seconds: [1]"))
        service.signal(signal.SIGHUP)  # an invalid file changes nothing
        wait_for(lambda: "reload refused" in service.log(), 30, "the refused reload", service)

        settings = yaml.safe_load(config.read_text())
        settings["stable_seconds"] = 1
        settings["processing_windows"] = []
        settings["users"]["bee"]["outbound"].append({"path": str(extra), "recursive": False})
        config.write_text(yaml.safe_dump(settings))
        service.signal(signal.SIGHUP)
        wait_for(lambda: files(folders["ready"]) == ["flower.webp"], 30, "the queued photo after reload", service)
        copy_as(DATA / "metadata" / "BlueSquare.jpg", extra / "from-phone.jpg", owner)
        wait_for(lambda: "from-phone.jpg" in files(folders["ready"]), 30, "the new folder's photo", service)
        assert service.proc.poll() is None and service.stop() == 0
    assert files(folders["archive"]) == ["flower.webp", "from-phone.jpg"]
