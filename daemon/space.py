"""A full disk: a write that fails for want of space pauses the work that needs that place, until space is freed.

A failed write (ENOSPC, EDQUOT; the ledger's :class:`~.ledger.LedgerFull`) is not the photo's fault. Instead
of retrying photo after photo against the full disk (each try counting towards ``retry.attempts``, and
every photo held once they are used up), the worker puts the photo back in the queue without counting the
try (worker.py, ``Pipeline.set_aside``) and reports the place here; no partial file is left (files.py and
deliver.py remove their temporary file when a write fails).

Places: each user's ready, held and archive folders, and the state directory. A full folder of a user
pauses that user's photos only (another user's folders may be on another file system; a file system shared
by several users' folders pauses each of them at their first failed write). A full state directory pauses
every photo and the intake of new files: the ledger cannot record anything (SQLite rolls the step back).
Files found meanwhile wait in memory and in their folders, and are taken once the ledger can record again.

Each pause is logged once (WARNING ``paused: ...``), shown by systemd's STATUS= line, and published in
``STATE/space.json`` for ``cloakd status``. The service probes the free space of every paused place every
PROBE_SECONDS: the work resumes (INFO ``resumed: ...``) once RESUME_BYTES more are free than at the pause
(a quarter of the file system, if that is less).
Free space does not show a user's quota (EDQUOT) or every network file system's limits, so a pause is also
tried again after TRY_AGAIN_SECONDS, doubling to MAX_TRY_AGAIN_SECONDS while the writes keep failing (INFO
``still full: ...``, once per try).

A full state directory cannot take the record of its own pause: ``cloakd status`` then probes the state
directory's free space itself and shows it as full when fewer than LOW_BYTES are free (:func:`paused_now`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import UserConfig
from .files import replace_file
from .ledger import LOW_BYTES, LedgerFull, free_bytes
from .running import iso, process_running, this_process

log = logging.getLogger("cloakd.space")

FILE_NAME = "space.json"
#: the errors of a write that found no space
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
PROBE_SECONDS = 2.0
RESUME_BYTES = 64 * 1024
TRY_AGAIN_SECONDS = 60.0
MAX_TRY_AGAIN_SECONDS = 3600.0
#: a failed write within this long after a try again continues the same pause (logged as "still full")
SAME_EPISODE_SECONDS = 2 * MAX_TRY_AGAIN_SECONDS
STATE_DIRECTORY = "the state directory"


def size(n: int) -> str:
    """``0 bytes``, ``12 KiB``, ``3.9 MiB``."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if n >= 10 else f"{n:.1f} {unit}"
    raise AssertionError


@dataclass(frozen=True)
class Place:
    what: str  # "the ready folder of bee", "the state directory"
    path: str
    user: str | None  # whose photos wait (None: everyone's)


@dataclass(frozen=True)
class Pause:
    """A place found full: what ``cloakd status`` shows (``--json``: these fields)."""

    what: str
    path: str
    user: str | None  # whose photos wait (None: everyone's: the state directory)
    free_bytes: int | None  # free when the write failed (by="service") or now (by="status")
    since: str | None  # when the write failed (ISO 8601); None for a probe by ``cloakd status``
    error: str  # the failed write's error
    by: str = "service"  # "service": a write of the service failed; "status": cloakd status probed it

    def text(self) -> str:
        """One line: e.g. ``the ready folder of bee (/srv/bee/Ready) is full (12 KiB free) since 14:02:11: bee's
        photos wait in their outbound folders until space is freed``."""
        from .engine.status import local_time

        free = "" if self.free_bytes is None else f" ({size(self.free_bytes)} free)"
        when = f" since {local_time(self.since, '%H:%M:%S')}" if self.since else ""
        who = "the ledger can record nothing: no photo is taken" if self.user is None else f"{self.user}'s photos wait"
        return f"{self.what} ({self.path}) is full{free}{when}: {who} until space is freed"


def place_of(error: BaseException, user: UserConfig | None, state_dir: Path) -> Place:
    """The place a write that found no space was for: the ledger's is the state directory; an OS error's file lies
    in one of the user's folders or the state directory; with no file named, the one with least space free."""
    state = Place(STATE_DIRECTORY, str(state_dir), None)
    if isinstance(error, LedgerFull) or user is None:
        return state
    places = [
        Place(f"the ready folder of {user.name}", str(user.ready), user.name),
        Place(f"the held folder of {user.name}", str(user.held), user.name),
    ]
    if user.originals.archive is not None:
        places.append(Place(f"the archive folder of {user.name}", str(user.originals.archive), user.name))
    places.append(state)
    for name in (getattr(error, "filename2", None), getattr(error, "filename", None)):
        inside = [p for p in places if name and str(name).startswith(p.path.rstrip("/") + "/")]
        if inside:
            return max(inside, key=lambda p: len(p.path))
    free = [(n, i) for i, n in enumerate(free_bytes(Path(p.path)) for p in places) if n is not None]
    return places[min(free)[1]] if free else places[0]


@dataclass
class _Paused:
    pause: Pause
    free_at: int | None  # free bytes at the pause, to see space freed
    try_at: float  # when to try again even without more space free
    tries: int  # tries again so far in this episode


class Space:
    """The places found full, and when to look again. Thread-safe: the workers report, the service probes."""

    def __init__(self, state_dir: Path, on_resume: Callable[[], None] | None = None):
        self.state_dir = Path(state_dir)
        self.on_resume = on_resume or (lambda: None)
        self._paused: dict[Place, _Paused] = {}
        self._tried: dict[Place, tuple[int, float]] = {}  # tries again in the episode, and when the last was
        self._lock = threading.Lock()
        self._publishing = threading.Lock()
        self._probed = 0.0
        self._unpublished = False

    def state_place(self) -> Place:
        return Place(STATE_DIRECTORY, str(self.state_dir), None)

    def ledger_paused(self) -> bool:
        """Whether the state directory is full: the ledger can record nothing."""
        with self._lock:
            return self.state_place() in self._paused

    def paused(self, user: str) -> bool:
        """Whether ``user``'s photos wait (a folder of theirs, or the state directory, is full)."""
        with self._lock:
            return any(place.user in (None, user) for place in self._paused)

    def pauses(self) -> list[Pause]:
        with self._lock:
            return [p.pause for p in self._paused.values()]

    def text(self) -> str:
        """For systemd's STATUS= line: ``paused: ...; ...`` or ""."""
        pauses = self.pauses()
        return "paused: " + "; ".join(p.text() for p in pauses) if pauses else ""

    def full(self, place: Place, error: str) -> None:
        """A write for ``place`` found no space: pause what needs it (logged once per pause)."""
        now, free = time.time(), free_bytes(Path(place.path))
        with self._lock:
            if place in self._paused:  # already paused: another worker met it too
                return
            tries, last = self._tried.pop(place, (0, 0.0))
            if now - last > SAME_EPISODE_SECONDS:
                tries = 0
            delay = min(MAX_TRY_AGAIN_SECONDS, TRY_AGAIN_SECONDS * 2**tries)
            pause = Pause(place.what, place.path, place.user, free, iso(now), error)
            self._paused[place] = _Paused(pause, free, now + delay, tries)
        if tries:
            log.info("still full: %s; trying again in %.0f s", pause.text(), delay)
        else:
            log.warning("paused: %s (%s)", pause.text(), error)
        self.publish()

    def ledger_full(self, error: LedgerFull) -> None:
        """The ledger could record nothing: the state directory is full."""
        self.full(self.state_place(), str(error))

    def probe(self, now: float | None = None) -> None:
        """Look at the free space of the paused places (at most every PROBE_SECONDS); resume those with space
        freed, or whose time to try again has come."""
        now = time.time() if now is None else now
        if now - self._probed < PROBE_SECONDS:
            return
        self._probed = now
        resumed = []
        with self._lock:
            for place, paused in list(self._paused.items()):
                free = free_bytes(Path(place.path))
                freed = free is not None and paused.free_at is not None and free >= paused.free_at + _enough(place)
                if freed or now >= paused.try_at:
                    del self._paused[place]
                    self._tried[place] = (0, 0.0) if freed else (paused.tries + 1, now)
                    resumed.append((paused.pause, free, freed))
        for pause, free, freed in resumed:
            left = "" if free is None else f" ({size(free)} free)"
            if freed:
                log.info("resumed: %s (%s) has space again%s", pause.what, pause.path, left)
            else:
                log.info("trying %s (%s) again%s", pause.what, pause.path, left)
        if resumed or self._unpublished:
            self.publish()
        if resumed:
            self.on_resume()

    def publish(self) -> None:
        """Write ``STATE/space.json`` for ``cloakd status`` (retried at the next probe if it cannot be written)."""
        record = {"paused": [asdict(p) for p in self.pauses()], **this_process(), "at": iso(time.time())}
        data, path = json.dumps(record).encode(), self.state_dir / FILE_NAME
        with self._publishing:
            try:
                replace_file(path, data)
            except OSError as e:
                if e.errno not in NO_SPACE or not _overwrite_in_place(path, data):
                    if not self._unpublished:
                        log.debug("cannot record the pauses for `cloakd status`: %s", e)
                    self._unpublished = True
                    return
            self._unpublished = False


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """With the disk full no new file can be written, but the blocks of an existing one can be overwritten: a
    record no longer than the old one replaces it in place (e.g. a pause ended while the state directory is
    full). Not atomic: a reader that catches it half-written finds it unreadable, and shows no pause from it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size < len(data):
            return False
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _enough(place: Place) -> int:
    """Space freed that resumes: RESUME_BYTES, or a quarter of a smaller file system."""
    try:
        st = os.statvfs(place.path)
    except OSError:
        return RESUME_BYTES
    return max(1, min(RESUME_BYTES, st.f_blocks * st.f_frsize // 4))


def paused_now(state_dir: Path) -> list[Pause]:
    """What is paused for want of space: the running service's published pauses, and the state directory when
    fewer than LOW_BYTES are free there (the service cannot publish its pause there then)."""
    pauses = []
    try:
        record = json.loads((state_dir / FILE_NAME).read_text())
        ticks = record.get("start_ticks")
        if process_running(int(record["pid"]), None if ticks is None else int(ticks)):
            pauses = [Pause(**p) for p in record["paused"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    free = free_bytes(state_dir)
    if free is not None and free < LOW_BYTES and not any(p.user is None for p in pauses):
        pauses.append(Pause(STATE_DIRECTORY, str(state_dir), None, free, None, "", by="status"))
    return pauses
