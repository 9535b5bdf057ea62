"""Whether the service runs: it records its start in ``STATE/service.json`` (pid, the kernel's start time of
that pid, when) and its clean stop (when), and ``cloakd status`` reads the record back (daemon/status.py).

A pid alone is not proof: after the service has gone, the kernel may give its pid to any other process. The
record therefore also holds the process's start time as the kernel counts it (``/proc/PID/stat``, field 22,
clock ticks after boot), which no later process with the same pid can share: the service runs only while a
live, not defunct process with that pid also has that start time. This is stricter than looking for
"cloakd" in ``/proc/PID/cmdline``, which another cloakd command (or a second service) would pass.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .files import replace_file

FILE_NAME = "service.json"


def iso(t: float) -> str:
    """The moment ``t`` (seconds since the epoch) in ISO 8601, local time with its UTC offset."""
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (the state) on; None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # field 2, the command name in parentheses, may hold anything


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot; None if it does not exist."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])  # field 22


def process_running(pid: int, ticks: int | None) -> bool:
    """Whether process ``pid`` is alive (not defunct) and is the one that started at ``ticks`` (None: a record
    written without them, by cloakd before 0.1.0's service record; then the pid alone decides)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    fields = _stat_fields(pid)
    if fields is None:  # gone since, or /proc hides it (hidepid): the signal's answer stands
        return ticks is None
    return fields[0] != "Z" and (ticks is None or int(fields[19]) == ticks)


def this_process() -> dict:
    """What identifies this process in a record: its pid and start ticks."""
    pid = os.getpid()
    return {"pid": pid, "start_ticks": start_ticks(pid)}


def record_start(state_dir: Path) -> None:
    """The service has started (before it loads the models): ``cloakd status`` now says it runs."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    record = {**this_process(), "started_at": iso(time.time()), "stopped_at": None}
    replace_file(state_dir / FILE_NAME, json.dumps(record).encode())


def record_stop(state_dir: Path) -> None:
    """The service stops cleanly: its record says when (a record without it ended otherwise)."""
    record = read_record(state_dir)
    if record is not None and record.pid == os.getpid():
        data = {"pid": record.pid, "start_ticks": record.start_ticks, "started_at": record.started_at}
        replace_file(state_dir / FILE_NAME, json.dumps({**data, "stopped_at": iso(time.time())}).encode())


@dataclass(frozen=True)
class ServiceRecord:
    pid: int
    start_ticks: int | None
    started_at: str  # ISO 8601
    stopped_at: str | None  # ISO 8601; None while it runs, or if it did not stop cleanly

    def running(self) -> bool:
        return self.stopped_at is None and process_running(self.pid, self.start_ticks)


def read_record(state_dir: Path) -> ServiceRecord | None:
    """The service's record; None if no service has written one (or it cannot be read)."""
    try:
        data = json.loads((state_dir / FILE_NAME).read_text())
        ticks, stopped = data.get("start_ticks"), data.get("stopped_at")
        record = ServiceRecord(
            int(data["pid"]), None if ticks is None else int(ticks), str(data["started_at"]), stopped and str(stopped)
        )
        for stamp in (record.started_at, record.stopped_at):
            if stamp is not None:
                datetime.fromisoformat(stamp)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record
