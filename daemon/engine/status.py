"""The engine's state as the running service last published it (``STATE/engine.json``), for ``cloakd
status``: which engine is in use, and whether a Dask cluster is reachable or the service waits or works
locally (fallback)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..config import Config
from ..files import replace_file

FILE_NAME = "engine.json"


def publish(state_dir: Path, text: str) -> None:
    record = {"engine": text, "pid": os.getpid(), "at": time.time()}
    replace_file(state_dir / FILE_NAME, json.dumps(record).encode())


def engine_line(config: Config) -> str:
    """One line: the engine the running service uses and its state; the configured one if it is not running."""
    configured = config.engine.kind + (f" {config.engine.scheduler}" if config.engine.kind == "dask" else "")
    try:
        record = json.loads((config.state_dir / FILE_NAME).read_text())
        text, pid, at = str(record["engine"]), int(record["pid"]), float(record["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"engine: {configured} (the service has not published its state)"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    if not _running(pid):
        return f"engine: {configured} (the service is not running; last state, {stamp}: {text})"
    return f"engine: {text}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
