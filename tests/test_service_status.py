"""The real service (``cloakd run``, as the account running the tests, without switching users) records its
start and stop: `cloakd status` says it runs, with its pid and since when, while it does, and that it does
not once it has stopped. Its log counts faces in words ("1 face", "0 faces")."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from conftest import CLOAKD, DATA
from servicekit import Service, files, wait_for, write_config

pytestmark = pytest.mark.slow

ONE_FACE = DATA / "faces" / "Bill_Gates" / "Bill_Gates_0003.jpg"  # cloakd finds 1 face in it
NO_FACE = DATA / "metadata" / "BlueSquare.jpg"


def status(config: Path) -> tuple[dict, list[str]]:
    """`cloakd status --json`'s service, and the lines of the table."""
    as_json = subprocess.run(
        [str(CLOAKD), "status", "--config", str(config), "--json"], capture_output=True, text=True, timeout=120
    )
    command = [str(CLOAKD), "status", "--config", str(config)]
    table = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 0 and table.returncode == 0, as_json.stderr + table.stderr
    return json.loads(as_json.stdout)["service"], table.stdout.splitlines()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    base = tmp_path_factory.mktemp("service-status")
    folders = {name: base / name for name in ("out", "ready", "held", "archive")}
    for folder in folders.values():
        folder.mkdir()
    config = write_config(base / "cloakd.yaml", folders, pwd.getpwuid(os.geteuid()).pw_name)
    with Service(config) as running:
        running.wait_ready()
        running.folders = folders
        yield running


def test_status_says_the_service_runs_with_its_pid(service):
    record, lines = status(service.config)
    assert record["running"] is True and record["pid"] == service.proc.pid and record["stopped_at"] is None
    since = datetime.fromisoformat(record["started_at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert lines[0] == f"service: running (pid {service.proc.pid}, since {since})"
    assert lines[1].startswith("engine: local: ")


def test_the_log_counts_faces_in_words(service):
    shutil.copyfile(ONE_FACE, service.folders["out"] / "one.jpg")
    shutil.copyfile(NO_FACE, service.folders["out"] / "none.jpg")
    wait_for(lambda: len(files(service.folders["ready"])) == 2, 300, "two photos delivered", service)
    log = service.log()
    assert "/one.jpg (1 face, " in log and "/none.jpg (0 faces, " in log, log
    assert "started: 1 user, 1 outbound folder, engine " in log, log


def test_status_says_a_stopped_service_is_not_running(service):
    pid = service.proc.pid
    assert service.stop() == 0
    record, lines = status(service.config)
    assert record["running"] is False and record["pid"] == pid and record["stopped_at"] is not None
    assert lines[0].startswith("service: not running (stopped ") and f"it ran as pid {pid} from " in lines[0]
    assert lines[1].startswith("engine: local (the service is not running; last state, ")
