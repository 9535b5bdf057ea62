"""The engine's state: which engine runs the photos, and whether a Dask cluster is reachable, the service
waits, or it works locally (fallback). An engine reports it (:class:`EngineState`), the running service
publishes it (``STATE/engine.json``), and ``cloakd status`` reads it back (daemon/status.py) and shows it
as its first line (:meth:`EngineState.text`, as in the service's log and systemd status)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

from ..files import replace_file
from ..running import iso, process_running, this_process

FILE_NAME = "engine.json"

# the states, in a few words (the details, e.g. why the scheduler is unreachable, are in ``detail``)
LOCAL = "working locally"  # kind local: the service's own worker threads
CONNECTED = "connected"  # kind dask: the scheduler reachable, with cloakd workers
NO_SCHEDULER = "waiting for the scheduler"  # kind dask, fallback wait: photos wait in the queue
NO_WORKER = "waiting for a cloakd worker"  # kind dask, fallback wait: connected, but no cloakd worker
FALLBACK = "working locally (fallback: local)"  # kind dask, no scheduler or worker: the service works alone


@dataclass(frozen=True)
class EngineState:
    kind: str  # "local" or "dask"
    state: str  # LOCAL, CONNECTED, NO_SCHEDULER, NO_WORKER or FALLBACK
    detail: str  # e.g. "2 worker threads on cpu", "2 cloakd worker threads", "scheduler unreachable (...)"
    since: str  # when this state began (ISO 8601, with the UTC offset)
    scheduler: str | None = None  # kind dask: the scheduler's address
    fallback: str | None = None  # kind dask: "wait" or "local"

    def text(self) -> str:
        """One line: e.g. ``dask tls://home:8786: scheduler unreachable (...) since 14:02:11; photos wait
        (fallback: wait)``."""
        if self.kind == "local":
            return f"local: {self.detail}"
        if self.state == CONNECTED:
            return f"dask {self.scheduler}: {self.detail}"
        then = "working locally (fallback: local)" if self.fallback == "local" else "photos wait (fallback: wait)"
        return f"dask {self.scheduler}: {self.detail} since {local_time(self.since, '%H:%M:%S')}; {then}"


def local_time(stamp: str, form: str) -> str:
    return datetime.fromisoformat(stamp).astimezone().strftime(form)


def publish(state_dir: Path, state: EngineState) -> None:
    record = {**asdict(state), **this_process(), "at": iso(time.time())}
    replace_file(state_dir / FILE_NAME, json.dumps(record).encode())


@dataclass(frozen=True)
class Published:
    """The state a service published, when, and whether that service still runs."""

    state: EngineState
    at: str
    running: bool


def read_published(state_dir: Path) -> Published | None:
    """What the service last published; None if it never did (or the record cannot be read)."""
    try:
        record = json.loads((state_dir / FILE_NAME).read_text())
        state = EngineState(**{f.name: record.get(f.name) for f in fields(EngineState)})
        pid, at, ticks = int(record["pid"]), str(record["at"]), record.get("start_ticks")
        for stamp in (state.since, at):
            datetime.fromisoformat(stamp)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Published(state, at, process_running(pid, None if ticks is None else int(ticks)))
