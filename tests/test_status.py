"""`cloakd status`: the snapshot of daemon/status.py, as a table and as JSON, from a real ledger and records."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from cloakd.core.targets import TargetBank
from cloakd.daemon.cli import main
from cloakd.daemon.config import load_config
from cloakd.daemon.engine.local import LocalEngine
from cloakd.daemon.engine.status import publish
from cloakd.daemon.ledger import DONE, HELD, Ledger
from cloakd.daemon.running import FILE_NAME as SERVICE_RECORD, start_ticks
from cloakd.daemon.targets import TargetStore
from servicekit import write_config


def _service_state(tmp_path: Path, **settings) -> Path:
    """A configuration for user bee with Sybil images (2 candidates), and a ledger with one photo queued, one
    done and one held; bee's target is chosen and its references record is damaged."""
    folders = {name: tmp_path / name for name in ("out", "ready", "held", "archive", "candidates", "sybil")}
    for folder in folders.values():
        folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folders["candidates"] / name).write_bytes(b"not read by status")
    account = pwd.getpwuid(os.getuid()).pw_name
    config = write_config(
        tmp_path / "cloakd.yaml",
        folders,
        account,
        user_sybil={"candidates": str(folders["candidates"]), "output": str(folders["sybil"]), "rate": "1/day"},
        **settings,
    )
    state = tmp_path / "state"
    ledger = Ledger(state)
    for i, end in enumerate((None, DONE, HELD)):
        ledger.enqueue("bee", f"{folders['out']}/{i}.jpg", 10, i)
        if end is not None:
            ledger.finish(ledger.claim(["bee"]).id, end, error="no face could be cloaked" if end == HELD else "")
    ledger.close()
    bank = TargetBank.load()
    TargetStore(state, bank).choose("bee", bank.centroids[:1])
    (state / "users" / "bee" / "references.npz").write_bytes(b"damaged")
    return config


def test_status_as_json_and_as_a_table_show_the_same_snapshot(tmp_path: Path, capsys):
    config = _service_state(tmp_path)
    assert main(["status", "--config", str(config), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["state_dir"] == str(tmp_path / "state")
    [bee] = snap["users"]
    target = TargetStore(tmp_path / "state").get("bee").name
    assert {k: bee[k] for k in ("name", "queued", "in_progress", "done", "held", "target", "sybil")} == {
        "name": "bee",
        "queued": 1,
        "in_progress": 0,
        "done": 1,
        "held": 1,
        "target": target,
        "sybil": {"made": 0, "left": 2},
    }
    assert bee["last_error"].endswith("no face could be cloaked") and not bee["references_folder"]
    assert bee["enrolled"] is None and "unreadable reference record" in bee["unreadable"]["references"]

    assert snap["service"] == {"running": False, "pid": None, "started_at": None, "stopped_at": None}

    assert main(["status", "--config", str(config)]) == 0
    service, engine, header, row = capsys.readouterr().out.splitlines()
    assert service == "service: not running (no service has started with this state directory)"
    assert engine == "engine: local (the service has not published its state)"
    assert header.split()[:5] == ["user", "queued", "in", "progress", "done"]
    assert row.split()[:5] == ["bee", "1", "0", "1", "1"]
    assert f"(unreadable)  {target}  0/2  " in row and row.endswith("no face could be cloaked")


def _engine_status(config: Path, capsys) -> tuple[dict, str]:
    """The engine in `cloakd status --json`, and its line above the table (after the service's)."""
    assert main(["status", "--config", str(config), "--json"]) == 0
    engine = json.loads(capsys.readouterr().out)["engine"]
    assert main(["status", "--config", str(config)]) == 0
    return engine, capsys.readouterr().out.splitlines()[1]


def test_the_engine_in_json_and_as_the_first_line(tmp_path: Path, capsys):
    """Nothing published yet; the state a running service published (this process, with the engine the
    service opens for kind local); the last state of a service that has stopped."""
    config = _service_state(tmp_path, workers=2)
    engine, line = _engine_status(config, capsys)
    assert engine == {
        "configured": "local",
        "service_running": None,
        "published_at": None,
        **dict.fromkeys(("kind", "state", "detail", "since", "scheduler", "fallback")),
    }
    assert line == "engine: local (the service has not published its state)"

    state = LocalEngine(load_config(config, check_folders=False), None, "cpu").state()
    publish(tmp_path / "state", state)
    engine, line = _engine_status(config, capsys)
    assert {k: engine[k] for k in ("configured", "service_running", "kind", "state", "detail")} == {
        "configured": "local",
        "service_running": True,
        "kind": "local",
        "state": "working locally",
        "detail": "2 worker threads on cpu",
    }
    assert engine["since"] == state.since and engine["scheduler"] is None and engine["fallback"] is None
    assert datetime.fromisoformat(engine["published_at"]) >= datetime.fromisoformat(state.since)
    assert line == "engine: local: 2 worker threads on cpu"

    stopped = (  # a service that published its state, then ended
        "import sys; from pathlib import Path; from cloakd.daemon.config import load_config; "
        "from cloakd.daemon.engine.local import LocalEngine; from cloakd.daemon.engine.status import publish; "
        "config = load_config(Path(sys.argv[1]), check_folders=False); "
        "publish(config.state_dir, LocalEngine(config, None, 'cpu').state())"
    )
    subprocess.run([sys.executable, "-c", stopped, str(config)], check=True, timeout=120)
    engine, line = _engine_status(config, capsys)
    assert engine["service_running"] is False and engine["state"] == "working locally"
    at = datetime.fromisoformat(engine["published_at"]).strftime("%Y-%m-%d %H:%M:%S")
    assert line == f"engine: local (the service is not running; last state, {at}: local: 2 worker threads on cpu)"


def _service_status(config: Path, capsys) -> tuple[dict, str]:
    """The service in `cloakd status --json`, and the first line of the table."""
    assert main(["status", "--config", str(config), "--json"]) == 0
    service = json.loads(capsys.readouterr().out)["service"]
    assert main(["status", "--config", str(config)]) == 0
    return service, capsys.readouterr().out.splitlines()[0]


def _record(state: Path, pid: int, ticks: int | None, stopped_at: str | None = None) -> None:
    started = "2026-12-04T10:00:00+00:00"
    record = {"pid": pid, "start_ticks": ticks, "started_at": started, "stopped_at": stopped_at}
    (state / SERVICE_RECORD).write_text(json.dumps(record))


def test_a_record_whose_process_has_ended_is_not_a_running_service(tmp_path: Path, capsys):
    """A service killed without stopping cleanly leaves its record: its pid is dead, so it is not running."""
    config = _service_state(tmp_path)
    gone = subprocess.Popen(["sleep", "60"])
    ticks = start_ticks(gone.pid)
    gone.send_signal(signal.SIGKILL)
    gone.wait()
    _record(tmp_path / "state", gone.pid, ticks)
    service, line = _service_status(config, capsys)
    assert service == {"running": False, "pid": gone.pid, "started_at": "2026-12-04T10:00:00+00:00", "stopped_at": None}
    assert line.startswith("service: not running (the one started ") and f"as pid {gone.pid} ended" in line


def test_a_pid_given_to_another_process_since_is_not_the_service(tmp_path: Path, capsys):
    """The record's pid is alive but belongs to a process that started at another time (the kernel reuses
    pids): not running. The same pid with its own start time would be (the check is the start time)."""
    config = _service_state(tmp_path)
    other = subprocess.Popen(["sleep", "60"])
    try:
        ticks = start_ticks(other.pid)
        _record(tmp_path / "state", other.pid, ticks - 1)
        service, line = _service_status(config, capsys)
        assert service["running"] is False and line.startswith("service: not running")
        _record(tmp_path / "state", other.pid, ticks)
        service, line = _service_status(config, capsys)
        assert service["running"] is True and service["pid"] == other.pid
        local = datetime.fromisoformat("2026-12-04T10:00:00+00:00").astimezone().strftime("%Y-%m-%d %H:%M:%S")
        assert line == f"service: running (pid {other.pid}, since {local})"
    finally:
        other.kill()
        other.wait()


def test_a_service_that_stopped_cleanly_says_when(tmp_path: Path, capsys):
    config = _service_state(tmp_path)
    _record(tmp_path / "state", os.getpid(), start_ticks(os.getpid()), stopped_at="2026-12-04T11:00:00+00:00")
    service, line = _service_status(config, capsys)
    assert service["running"] is False and service["stopped_at"] == "2026-12-04T11:00:00+00:00"
    assert line.startswith("service: not running (stopped ") and f"it ran as pid {os.getpid()} from " in line


def test_without_config_a_user_with_a_per_user_service_gets_their_own_configuration(tmp_path, monkeypatch):
    """A laptop user (install.sh --user) runs `cloakd status` with no --config: their file, not /etc's; root
    keeps the system's."""
    from cloakd.daemon.config import DEFAULT_CONFIG, default_config

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the caller is not root
    assert default_config() == DEFAULT_CONFIG  # no per-user file yet
    mine = tmp_path / "cloakd" / "cloakd.yaml"
    mine.parent.mkdir()
    mine.write_text("users: {}\n")
    assert default_config() == mine
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_config() == DEFAULT_CONFIG
