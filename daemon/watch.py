"""Notice photos in the outbound folders, and take each one only once it is complete.

Two sources feed one list of candidates: watchdog observers (inotify; a polling observer for folders on
network file systems, where inotify does not see changes made by other machines) and full scans (at
start, periodically, after an inotify queue overflow, and for every folder moved in). With inotify a
file becomes a candidate when it is closed after writing or moved in (a file still being copied is not);
a polling observer only sees that something changed, so there any change makes a candidate.

A candidate is taken when its size, mtime and inode have stayed the same for ``stable_seconds``, so that
a writer that closes and reopens, or a slow network copy, is not cut short, and when no process has it open
for writing (/proc: a download that stalls for minutes is still not complete). Temporary names of browsers,
editors and sync tools are never candidates: the finished file arrives by a rename, which is a move-in.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from cloakd.core.errors import os_error_text

from .config import Config, Folder
from .privileges import Account, acting_as

log = logging.getLogger("cloakd.watch")

#: names that are never photos, or not yet: partial downloads, editor and sync-tool temporaries, OS files.
#: Every dot-file is ignored too (.syncthing.*.tmp, .~lock.*#, our own .cloakd-*.tmp, .DS_Store).
TEMPORARY_PATTERNS = (
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.opdownload",
    "*.filepart",
    "*.tmp",
    "*.temp",
    "*.swp",
    "*~",
    "~$*",
    "~*.tmp",
    "thumbs.db",
    "desktop.ini",
)


def is_temporary(name: str) -> bool:
    """Whether a file name is a temporary or system file (ignored until it is renamed to a real name)."""
    lower = name.lower()
    return lower.startswith(".") or any(fnmatch.fnmatchcase(lower, p) for p in TEMPORARY_PATTERNS)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    inode: int
    since: float  # monotonic time this size/mtime/inode was first observed


class Candidates:
    """Files waiting to be stable: ``note`` from any thread, ``take_stable`` from the service loop."""

    def __init__(self, stable_seconds: float):
        self.stable_seconds = stable_seconds
        self._pending: dict[tuple[str, str], _Seen | None] = {}
        self._lock = threading.Lock()

    def note(self, user: str, path: str) -> None:
        if is_temporary(os.path.basename(path)):
            return
        with self._lock:
            self._pending.setdefault((user, path), None)

    def __len__(self) -> int:
        return len(self._pending)

    def take_stable(
        self, accounts: dict[str, Account], now: float | None = None
    ) -> list[tuple[str, str, os.stat_result]]:
        """Candidates unchanged for ``stable_seconds``: (user, path, lstat), each taken once.

        Files are looked at with their user's rights; one that is gone, or a folder, is dropped. Symbolic
        links, FIFOs, sockets and devices are taken like files: the worker refuses them with a reason
        (privileges.read_photo) and holds them. A regular file that a process still has open for writing
        (:func:`open_for_writing`) waits, however long its writer pauses.
        """
        now = time.monotonic() if now is None else now
        by_user: dict[str, list[tuple[str, _Seen | None]]] = {}
        with self._lock:
            for (user, path), seen in self._pending.items():
                by_user.setdefault(user, []).append((path, seen))
        ripe, dropped = [], []
        for user, path, seen, st in _looked_at(by_user, accounts):
            if st is None or stat.S_ISDIR(st.st_mode):
                dropped.append((user, path))
            elif seen is None or (seen.size, seen.mtime_ns, seen.inode) != (st.st_size, st.st_mtime_ns, st.st_ino):
                self._see(user, path, st, now)
            elif now - seen.since >= self.stable_seconds:
                ripe.append((user, path, st))
        writing = open_for_writing({(st.st_dev, st.st_ino) for _, _, st in ripe if stat.S_ISREG(st.st_mode)})
        stable = []
        for user, path, st in ripe:
            if (st.st_dev, st.st_ino) in writing:
                log.debug("%s: %s is still open for writing: it waits", user, path)
                self._see(user, path, st, now)
            else:
                stable.append((user, path, st))
                dropped.append((user, path))
        with self._lock:
            for key in dropped:
                self._pending.pop(key, None)
        return stable

    def _see(self, user: str, path: str, st: os.stat_result, now: float) -> None:
        with self._lock:
            self._pending[(user, path)] = _Seen(st.st_size, st.st_mtime_ns, st.st_ino, now)


def _looked_at(
    by_user: dict, accounts: dict[str, Account]
) -> Iterator[tuple[str, str, _Seen | None, os.stat_result | None]]:
    """(user, path, seen, lstat) of each candidate, looked at with its user's rights: once per user, not per
    file (thousands wait after a start-up scan); None for a file that is gone or of a user no longer there."""
    for user in sorted(by_user):
        if user not in accounts:
            yield from ((user, path, seen, None) for path, seen in by_user[user])
            continue
        with acting_as(accounts[user]):
            looked = [(user, path, seen, _lstat(path)) for path, seen in by_user[user]]
        yield from looked


def open_for_writing(files: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Those of ``files`` (device, inode) that some process has open for writing, as /proc shows it.

    A copy that pauses longer than ``stable_seconds`` without closing the file (a stalled download, an
    editor saving in steps) looks stable, but is not complete: it waits until its writer closes it. As
    root every process is seen; in single-user mode, the user's own (those that write to their folders).
    A writer on another machine (a network share) is not seen: there, ``stable_seconds`` alone decides.
    """
    found: set[tuple[int, int]] = set()
    if not files:
        return found
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or another user's process (single-user mode)
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in files and key not in found and _writes(pid, fd):
                found.add(key)
    return found


def _writes(pid: str, fd: str) -> bool:
    """Whether file descriptor ``fd`` of process ``pid`` was opened for writing (its fdinfo flags)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
    except (OSError, ValueError, IndexError):
        pass
    return False


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def walk(account: Account, folder: Folder) -> list[str]:
    """Every non-temporary file (or link) in ``folder``, as its user sees it; hidden folders are skipped.

    A list, not a generator: the user's rights must end in this thread, before anything else runs.
    """
    found = []
    with acting_as(account):
        for top, dirs, files in os.walk(folder.path, onerror=lambda e: log.warning("cannot list %s", os_error_text(e))):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if folder.recursive else []
            found += [os.path.join(top, name) for name in sorted(files) if not is_temporary(name)]
    return found


class _Handler(FileSystemEventHandler):
    """Turns one folder's watchdog events into candidates (and folder scans for folders moved in)."""

    def __init__(self, user: str, folder: Folder, candidates: Candidates, scan: Callable[[str, Folder], None]):
        self.user, self.folder, self.candidates, self.scan = user, folder, candidates, scan

    def dispatch(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(event.dest_path if isinstance(event, (FileMovedEvent, DirMovedEvent)) else event.src_path)
        if not path.startswith(str(self.folder.path) + os.sep):
            return  # moved out of the folder
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            if self.folder.recursive and not os.path.basename(path).startswith("."):
                self.scan(self.user, Folder(Path(path), True, self.folder.polling))
        elif isinstance(event, (FileClosedEvent, FileMovedEvent)):
            self.candidates.note(self.user, path)
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)) and (self.folder.polling or _whole(path)):
            self.candidates.note(self.user, path)  # polling sees no close; a new link has nothing to write


def _whole(path: str) -> bool:
    """Complete the moment it is created (no close-after-write will follow): a symbolic or hard link, or
    no regular file at all (a FIFO, socket or device, which the worker then holds with its reason)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_nlink > 1


class _OverflowHook(logging.Handler):
    """watchdog recovers from an inotify queue overflow by itself, but only logs it: we rescan then."""

    def __init__(self, rescan: Callable[[], None]):
        super().__init__(logging.WARNING)
        self.rescan = rescan

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.rescan()


class Watcher:
    """Observers on every outbound folder of every configured user, plus full scans on demand."""

    def __init__(self, config: Config, accounts: dict[str, Account], candidates: Candidates):
        self.config, self.accounts, self.candidates = config, accounts, candidates
        self._observers: list[BaseObserver] = []
        self._overflow = _OverflowHook(self.rescan_soon)
        self._rescan_wanted = threading.Event()

    def start(self) -> None:
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
        for user in self.config.users.values():
            for folder in user.outbound:
                self._observers.append(self._observe(user.name, folder))

    def _observe(self, user: str, folder: Folder) -> BaseObserver:
        handler = _Handler(user, folder, self.candidates, self.scan)
        if not folder.polling:
            observer = InotifyObserver(generate_full_events=True)  # a move from outside is a move, not a create
            try:
                observer.schedule(handler, str(folder.path), recursive=folder.recursive)
                observer.start()
                return observer
            except OSError as e:  # e.g. the inotify watch limit (fs.inotify.max_user_watches) is reached
                log.warning(
                    "%s: cannot watch with inotify (%s); polling it every %g s instead",
                    user,
                    os_error_text(e, folder.path),
                    self.config.poll_seconds,
                )
                observer.stop()
        observer = PollingObserver(timeout=self.config.poll_seconds)
        observer.schedule(handler, str(folder.path), recursive=folder.recursive)
        observer.start()
        return observer

    def stop(self) -> None:
        logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow)
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout=5)
        self._observers.clear()

    def alive(self) -> bool:
        return all(o.is_alive() for o in self._observers)

    def scan(self, user: str, folder: Folder) -> int:
        account = self.accounts.get(user)
        if account is None:
            return 0
        count = 0
        for path in walk(account, folder):
            self.candidates.note(user, path)
            count += 1
        return count

    def rescan(self) -> None:
        """Every file of every outbound folder becomes a candidate (known ones are skipped when stable)."""
        self._rescan_wanted.clear()
        total = sum(self.scan(user.name, folder) for user in self.config.users.values() for folder in user.outbound)
        log.debug("rescan: %d files in the outbound folders", total)

    def rescan_soon(self) -> None:
        self._rescan_wanted.set()

    def rescan_wanted(self) -> bool:
        return self._rescan_wanted.is_set()
