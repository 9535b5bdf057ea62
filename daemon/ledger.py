"""The ledger: one SQLite row per photo occurrence, so that nothing is lost or done twice.

A file is recognised by (user, path, size, mtime_ns) for as long as it stays where it was found (queued, in
progress, or finished with the original left in place): a rescan then knows it without reading it, and a
file edited in place is a new row. Once the original has moved on (archived, deleted, held), the same key
seen again is a new arrival, e.g. a held photo moved back to be tried again. Content identity is the sha256,
recorded once the worker has read the file: content already delivered for the same user is never cloaked
again.

States (a row moves only forward, except working -> queued for a retry or after a crash)::

    queued --claim--> working --+--> done   output durable in ready (delivered_at), original handled
       ^                        +--> held   original moved to held/ next to a reason (or left, reason written)
       |                        +--> gone   the file vanished or changed before it was read
       +---- retry (backoff) ---+            transient failure (disk full, I/O error...)

While working, every durable file operation is *planned* in the row before it happens (``output`` +
``output_sha256`` before the rename into ready, ``original`` before moving the original, ``held`` before
moving into held/), and recorded after it. After a crash, worker.reconcile() compares the plan with the
files: a planned output that exists with the planned hash was delivered; anything else is redone.

The database uses WAL with synchronous=FULL: a committed step survives kill -9 and power loss.

A full disk (the state directory's file system, or the quota of the account that runs cloakd): SQLite rolls
the transaction back, so the ledger stays as it was before the step, and the step raises :class:`LedgerFull`
(the worker and the service pause until space is freed, daemon/space.py). A damaged database is never
replaced by an empty one, which would deliver again every photo still in an outbound folder: opening it
raises :class:`LedgerDamaged`, naming the file and what to do (the writable open runs ``PRAGMA
quick_check``). A WAL file cut short (a torn write) is no damage: SQLite keeps its frames up to the last
whole, checksummed commit.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloakd.core.errors import CloakdError

QUEUED, WORKING, DONE, HELD, GONE = "queued", "working", "done", "held", "gone"
FINAL = (DONE, HELD, GONE)
FILE_NAME = "ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    id            INTEGER PRIMARY KEY,
    user          TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    sha256        TEXT,
    state         TEXT    NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    error         TEXT    NOT NULL DEFAULT '',
    output        TEXT,
    output_sha256 TEXT,
    delivered_at  REAL,
    original      TEXT,
    held          TEXT,
    next_try      REAL    NOT NULL DEFAULT 0,
    queued_at     REAL    NOT NULL,
    started_at    REAL,
    finished_at   REAL
);
CREATE INDEX IF NOT EXISTS photos_file ON photos (user, path);
CREATE INDEX IF NOT EXISTS photos_content ON photos (user, sha256);
CREATE INDEX IF NOT EXISTS photos_todo ON photos (state, next_try);
CREATE INDEX IF NOT EXISTS photos_turn ON photos (user, started_at);
CREATE INDEX IF NOT EXISTS photos_queue ON photos (user, state, next_try);
CREATE INDEX IF NOT EXISTS photos_errors ON photos (user, state) WHERE error != '';
"""


class LedgerFull(CloakdError):
    """Nothing could be recorded: the state directory's file system is full. The step was rolled back."""


class LedgerDamaged(CloakdError):
    """The ledger database is damaged (not a database, or its integrity check fails)."""


#: SQLite's primary result codes met here (:func:`_code`)
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
#: a state directory with fewer bytes free counts as full: SQLite's I/O errors there are the full disk's (opening
#: a ledger in WAL mode after a clean stop must create its -shm file: SQLITE_IOERR_SHMSIZE, not SQLITE_FULL)
LOW_BYTES = 64 * 1024


def _code(e: sqlite3.Error) -> int:
    """SQLite's primary result code of ``e`` (0 if it has none)."""
    return (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF


def free_bytes(folder: Path) -> int | None:
    """Bytes free for an unprivileged writer on ``folder``'s file system (None if it cannot be looked at)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class Row:
    id: int
    user: str
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    state: str
    attempts: int
    error: str
    output: str | None
    output_sha256: str | None
    delivered_at: float | None
    original: str | None
    held: str | None
    next_try: float
    queued_at: float
    started_at: float | None
    finished_at: float | None


@dataclass
class UserCounts:
    queued: int = 0
    working: int = 0
    done: int = 0
    held: int = 0
    gone: int = 0
    last_error: str = ""


class Ledger:
    """Thread-safe access to the ledger database (one connection, one lock, short transactions)."""

    def __init__(self, state_dir: Path, readonly: bool = False):
        self.path = state_dir / FILE_NAME
        try:
            self._db = self._open(state_dir, readonly)
        except sqlite3.Error as e:
            raise self._explained(e) from None
        self._db.row_factory = lambda cursor, values: Row(*values)
        self._lock = threading.Lock()

    def _open(self, state_dir: Path, readonly: bool) -> sqlite3.Connection:
        if readonly:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=10000")
            return db
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            problems = [p for (p,) in db.execute("PRAGMA quick_check(5)").fetchall() if p != "ok"]
            if problems:
                raise LedgerDamaged(self._damaged("; ".join(problems)))
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _damaged(self, what: str) -> str:
        return (
            f"the ledger {self.path} is damaged ({what}); cloakd will not start over with an empty ledger, which "
            f"would deliver again every photo still in an outbound folder. Fix: stop the service, keep a copy of "
            f"the file, then restore it from a backup, or recover what is readable (sqlite3 {self.path} .recover "
            f"| sqlite3 {self.path}.recovered) and move the recovered file in its place"
        )

    def _explained(self, e: sqlite3.Error) -> Exception:
        """A clear error for SQLite's: a full disk, a damaged file; anything else names the file."""
        code = _code(e)
        if self._full(e):
            free = free_bytes(self.path.parent)
            return LedgerFull(
                f"{self.path}: nothing could be recorded: the disk is full"
                + ("" if free is None else f" ({free} bytes free in {self.path.parent})")
                + ("" if code == _SQLITE_FULL else f"; SQLite said: {e}")
            )
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return LedgerDamaged(self._damaged(str(e)))
        return CloakdError(f"cannot use the ledger {self.path}: {e}")

    def _full(self, e: sqlite3.Error) -> bool:
        """Whether ``e`` is the full disk's: SQLITE_FULL, or an I/O error where almost nothing is free."""
        code = _code(e)
        if code in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
            free = free_bytes(self.path.parent)
            return free is not None and free < LOW_BYTES
        return code == _SQLITE_FULL

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is recorded, or (on any error, e.g. a full disk) none of it."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._rollback()
                    raise
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    self._rollback()  # SQLite has usually rolled back itself (a full disk); never leave it open
                    raise
            except sqlite3.Error as e:
                if _code(e) != _SQLITE_CORRUPT and not self._full(e):
                    raise
                raise self._explained(e) from None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _update(self, row_id: int, **values) -> None:
        columns = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            db.execute(f"UPDATE photos SET {columns} WHERE id = ?", (*values.values(), row_id))

    def get(self, row_id: int) -> Row:
        with self._lock:
            return self._db.execute("SELECT * FROM photos WHERE id = ?", (row_id,)).fetchone()

    # --- intake -----------------------------------------------------------------------------------------

    _SAME_FILE = (
        "SELECT 1 FROM photos WHERE user = ? AND path = ? AND size = ? AND mtime_ns = ? "
        "AND (state IN ('queued', 'working') OR original = path)"
    )

    def known(self, user: str, path: str, size: int, mtime_ns: int) -> bool:
        """Whether this exact file (same path, size and mtime) has a row and is still where it was found."""
        return bool(self._plain(self._SAME_FILE, (user, path, size, mtime_ns)))

    def enqueue(self, user: str, path: str, size: int, mtime_ns: int) -> int | None:
        """Queue a stable file; None if it is already known (idempotent)."""
        return self.enqueue_many([(user, path, size, mtime_ns)])[0]

    def enqueue_many(self, files: Sequence[tuple[str, str, int, int]]) -> list[int | None]:
        """Queue stable files (user, path, size, mtime_ns) in one transaction, so one sync to disk for the lot
        (a full outbound folder at start-up is thousands of them); per file its new row id, or None if it is
        already known (also when it comes twice in ``files``)."""
        ids: list[int | None] = []
        with self._tx() as db:
            plain = db.cursor()
            plain.row_factory = None
            stamp = time.time()
            for file in files:
                if plain.execute(self._SAME_FILE, file).fetchone() is not None:
                    ids.append(None)
                    continue
                ids.append(
                    plain.execute(
                        "INSERT INTO photos (user, path, size, mtime_ns, state, queued_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (*file, QUEUED, stamp),
                    ).lastrowid
                )
        return ids

    # --- the worker's steps -------------------------------------------------------------------------------

    def claim(self, users: Collection[str], now: float | None = None) -> Row | None:
        """Take the next due queued row of one of ``users``: working, attempts + 1 (committed first).

        Fair across users: round-robin, the user whose last photo started longest ago (or never) first, then
        that user's oldest due row; so one user's thousand photos never make another's wait behind them.
        Two indexed look-ups per user (the user's next due row, the user's last start), whatever the backlog:
        never a pass over every queued row.
        """
        if not users:
            return None
        now = time.time() if now is None else now
        with self._tx() as db:
            plain = db.cursor()
            plain.row_factory = None
            best: tuple[tuple, Row] | None = None
            for user in users:
                row = db.execute(
                    "SELECT * FROM photos WHERE user = ? AND state = ? AND next_try <= ? ORDER BY next_try, id LIMIT 1",
                    (user, QUEUED, now),
                ).fetchone()
                if row is None:
                    continue
                (last,) = plain.execute(
                    "SELECT started_at FROM photos WHERE user = ? ORDER BY started_at DESC LIMIT 1", (user,)
                ).fetchone()
                turn = (last is not None, last or 0.0, row.next_try, row.id)
                if best is None or turn < best[0]:
                    best = (turn, row)
            if best is None:
                return None
            db.execute(
                "UPDATE photos SET state = ?, attempts = attempts + 1, started_at = ? WHERE id = ?",
                (WORKING, now, best[1].id),
            )
            return db.execute("SELECT * FROM photos WHERE id = ?", (best[1].id,)).fetchone()

    def record_hash(self, row_id: int, sha256: str) -> Row | None:
        """Store the content hash; return an earlier row with the same content for the same user that was
        delivered, or that another worker has in hand (then the caller waits), else None."""
        with self._tx() as db:
            db.execute("UPDATE photos SET sha256 = ? WHERE id = ?", (sha256, row_id))
            return db.execute(
                "SELECT * FROM photos WHERE user = (SELECT user FROM photos WHERE id = ?) "
                "AND sha256 = ? AND id != ? AND (delivered_at IS NOT NULL OR state = ?) "
                "ORDER BY delivered_at IS NULL, id LIMIT 1",
                (row_id, sha256, row_id, WORKING),
            ).fetchone()

    def plan_output(self, row_id: int, output: str, output_sha256: str) -> None:
        self._update(row_id, output=output, output_sha256=output_sha256)

    def delivered(self, row_id: int, output: str | None = None) -> None:
        """The output is durable (or, with ``output``, the content was delivered before as that file)."""
        values: dict = {"delivered_at": time.time(), "error": ""}
        if output is not None:
            values["output"] = output
        self._update(row_id, **values)

    def plan_original(self, row_id: int, destination: str) -> None:
        self._update(row_id, original=destination)

    def plan_held(self, row_id: int, held: str, reason: str) -> None:
        """Decide to hold (``held`` "": destination not chosen yet) and keep the reason for the note."""
        self._update(row_id, held=held, error=reason)

    def finish(self, row_id: int, state: str, error: str = "", original: str | None = None) -> None:
        assert state in FINAL
        values = {"state": state, "finished_at": time.time(), "error": error}
        if original is not None:
            values["original"] = original
        self._update(row_id, **values)

    def retry(self, row_id: int, error: str, at: float) -> None:
        """Back to the queue after a transient failure; due at ``at``."""
        self._update(row_id, state=QUEUED, error=error, next_try=at)

    def requeue(self, row_id: int, forget_output: bool) -> None:
        """After a crash: redo the row (dropping a planned output that never became durable)."""
        values = {"state": QUEUED, "next_try": 0.0}
        if forget_output:
            values.update(output=None, output_sha256=None)
        self._update(row_id, **values)

    def put_back(self, row_id: int) -> None:
        """The engine could not take the row (no scheduler, no worker): queued again at once, and the try
        does not count as an attempt."""
        with self._tx() as db:
            db.execute(
                "UPDATE photos SET state = ?, attempts = MAX(0, attempts - 1), next_try = 0 WHERE id = ?",
                (QUEUED, row_id),
            )

    def forgive(self, row_id: int) -> None:
        """The service stopped while this row was in hand: the interruption does not count as an attempt."""
        with self._tx() as db:
            db.execute(
                "UPDATE photos SET attempts = MAX(0, attempts - 1) WHERE id = ? AND state = ?", (row_id, WORKING)
            )

    # --- restart, scheduling, housekeeping, status --------------------------------------------------------

    def interrupted(self) -> list[Row]:
        with self._lock:
            return self._db.execute("SELECT * FROM photos WHERE state = ? ORDER BY id", (WORKING,)).fetchall()

    def _plain(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows as plain tuples (for aggregates)."""
        with self._lock:
            cursor = self._db.cursor()
            cursor.row_factory = None
            return cursor.execute(sql, params).fetchall()

    def next_due(self) -> float | None:
        """When the earliest queued row becomes due (None if nothing is queued)."""
        return self._plain("SELECT MIN(next_try) FROM photos WHERE state = ?", (QUEUED,))[0][0]

    def waiting(self, users: Collection[str], now: float | None = None) -> int:
        """Photos of ``users`` (the configured ones) a worker has in hand or could claim now (queued and due):
        background work (Sybil images) waits while there are any. A retry due later does not count, nor the
        rows of a user removed from the configuration (no worker takes them)."""
        if not users:
            return 0
        now = time.time() if now is None else now
        marks = ",".join("?" * len(users))
        return self._plain(
            f"SELECT COUNT(*) FROM photos WHERE user IN ({marks}) AND (state = ? OR (state = ? AND next_try <= ?))",
            (*users, WORKING, QUEUED, now),
        )[0][0]

    def to_delete(self, user: str, finished_before: float) -> list[Row]:
        """Done rows whose original still exists (in place or archived) and was finished before the time."""
        with self._lock:
            return self._db.execute(
                "SELECT * FROM photos WHERE user = ? AND state = ? AND finished_at < ? "
                "AND original IS NOT NULL AND original != ''",
                (user, DONE, finished_before),
            ).fetchall()

    def forget_original(self, row_id: int) -> None:
        self._update(row_id, original="")

    def prune(self, user: str, finished_before: float, keep_under: Collection[str]) -> int:
        """Delete final rows finished before the time, except those whose original still lies under one of
        ``keep_under`` (a rescan would find it again and must recognise it)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM photos WHERE user = ? AND state IN (?, ?, ?) AND finished_at < ?",
                (user, *FINAL, finished_before),
            ).fetchall()
            doomed = [r.id for r in rows if not _rescan_finds(r, keep_under)]
            db.executemany("DELETE FROM photos WHERE id = ?", [(i,) for i in doomed])
        return len(doomed)

    def counts(self) -> dict[str, UserCounts]:
        """Rows per user and state, and each user's most recent error (held reason or pending retry)."""
        out: dict[str, UserCounts] = {}
        for user, state, n in self._plain("SELECT user, state, COUNT(*) FROM photos GROUP BY user, state"):
            setattr(out.setdefault(user, UserCounts()), state, n)
        for user, error, when in self._plain(
            "SELECT user, error, MAX(COALESCE(finished_at, started_at, queued_at)) FROM photos "
            "WHERE error != '' AND +state IN (?, ?) GROUP BY user",  # + : by photos_errors, not every queued row
            (HELD, QUEUED),
        ):
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
            out.setdefault(user, UserCounts()).last_error = f"{stamp} {error}"
        return out

    def rows(self, user: str | None = None) -> list[Row]:
        with self._lock:
            if user is None:
                return self._db.execute("SELECT * FROM photos ORDER BY id").fetchall()
            return self._db.execute("SELECT * FROM photos WHERE user = ? ORDER BY id", (user,)).fetchall()


def _rescan_finds(row: Row, folders: Collection[str]) -> bool:
    """Whether a file of this row still lies in one of ``folders`` (so the row must stay to recognise it)."""
    if row.state == GONE or row.original == "":
        return False
    where = row.held if row.state == HELD and row.held else (row.original or row.path)
    return any(where.startswith(f.rstrip("/") + "/") for f in folders)
