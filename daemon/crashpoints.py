"""Named moments between two durable steps, where the crash tests kill the service on purpose.

The worst moments for a crash are between two durable steps: an output renamed into the ready folder that
the ledger has not recorded yet, an original moved into the archive that its row does not know of. Random
kills hit them rarely; these points make every one of them reproducible. :func:`reached` does nothing unless
the environment variable ``CLOAKD_CRASH_AT`` is set, which only the tests do (tests/test_crash.py):
``NAME@N`` kills the process with SIGKILL (what ``kill -9`` sends; nothing is flushed or cleaned up) the
``N``-th time the point ``NAME`` is reached (``N`` from 1; ``NAME`` alone means the first time).

The points, in the order of one photo's steps (daemon/worker.py's docstring has the steps):

claimed, output-planned, output-written (the temporary file is complete, not yet renamed), output-renamed
(in the ready folder, not yet in the ledger), delivered, archive-planned, archive-copied (across file
systems: the copy is in place, the original not yet removed), archive-moved (not yet in the ledger), and for
a photo that is held: hold-planned, hold-copied, hold-moved, reason-written (the reason file's temporary is
complete), reason-renamed; done (the row is finished).
"""

from __future__ import annotations

import os
import signal
import threading

ENVIRONMENT = "CLOAKD_CRASH_AT"
POINTS = (
    "claimed",
    "output-planned",
    "output-written",
    "output-renamed",
    "delivered",
    "archive-planned",
    "archive-copied",
    "archive-moved",
    "hold-planned",
    "hold-copied",
    "hold-moved",
    "reason-written",
    "reason-renamed",
    "done",
)


def _plan(setting: str) -> tuple[str, int] | None:
    if not setting:
        return None
    name, _, nth = setting.partition("@")
    if name not in POINTS or not (nth or "1").isdigit() or int(nth or "1") < 1:
        raise ValueError(f"{ENVIRONMENT}={setting!r}: use NAME or NAME@N, NAME one of {', '.join(POINTS)}")
    return name, int(nth or "1")


_PLAN = _plan(os.environ.get(ENVIRONMENT, ""))
_hits = 0
_lock = threading.Lock()


def reached(name: str) -> None:
    """The point ``name`` is reached: the process dies here if the crash test asked for it."""
    global _hits
    if _PLAN is None or _PLAN[0] != name:
        return
    with _lock:
        _hits += 1
        if _hits == _PLAN[1]:
            os.kill(os.getpid(), signal.SIGKILL)
