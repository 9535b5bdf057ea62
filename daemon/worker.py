"""Take queued photos from the ledger and carry each one to the ready folder (or to held/), crash-safely.

The order of durable steps for one photo (each ledger step is a committed transaction):

1. claim: the row becomes ``working``, attempts + 1 (a photo that crashes the service every time is
   held after ``retry.attempts`` tries instead of crashing it forever);
2. read the original with the user's rights, record its sha256; content already delivered for this user
   is not cloaked again (the row points at the earlier output);
3. protect (process.py); a photo that cannot be protected (core.errors.PhotoError) is held (step 6);
   any other failure (an I/O error, an unreadable state record) is retried later with back-off; a write
   that finds no space (a full disk or quota, or a full ledger) pauses the work that needs that place
   instead, and the photo goes back to the queue without counting the try (space.py, :meth:`Pipeline.set_aside`);
4. plan the output name and hash in the ledger, write a hidden temporary file in the ready folder,
   fsync, rename without replacing, fsync the folder (deliver.py), then record ``delivered_at``;
5. only then handle the original per policy (plan its archive name, move it; or delete it), and the
   row is ``done``;
6. holding: plan the held name and the reason in the ledger, move the original into held/, write
   ``NAME.reason.txt`` next to it, and the row is ``held``.

After a crash, :meth:`Pipeline.reconcile` looks at every ``working`` row: a planned output that exists
with the planned hash was delivered (step 5 follows); one that does not is dropped with its temporary
file and the photo is redone. A planned hold or archive move is completed. Nothing is done twice: the
ledger knows each completed step, and a rename never replaces a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cloakd.core.errors import CloakdError, PhotoError, os_error_text

from . import deliver
from .config import Config, UserConfig
from .crashpoints import reached
from .files import fit_name
from .ledger import DONE, GONE, HELD, WORKING, Ledger, LedgerFull, Row
from .privileges import Account, Original, RefusedFile, read_photo
from .process import ProcessResult
from .space import NO_SPACE, Space, place_of
from .words import count

log = logging.getLogger("cloakd.worker")

#: the longest wait between two retries of a transient failure
MAX_RETRY_DELAY = 3600.0
REASON_SUFFIX = ".reason.txt"

Engine = Callable[[UserConfig, Account, Original], ProcessResult]


class Transient(Exception):
    """A failure worth retrying later (disk full, I/O error...); carries the message for the ledger."""


class Paused(Exception):
    """The engine cannot take the photo now (no Dask scheduler or worker, daemon/engine/cluster.py): the row
    goes back to the queue at once, and the try does not count as an attempt."""


class Pipeline:
    """One photo at a time, in the order of durable steps above. Thread-safe: rows are claimed atomically."""

    def __init__(
        self,
        config: Config,
        accounts: dict[str, Account],
        ledger: Ledger,
        engine: Engine,
        notice: Callable[[str, str], None],
        on_retry: Callable[[float], None],
        space: Space | None = None,
    ):
        self._setup = (config, accounts)
        self.ledger, self.engine, self.notice, self.on_retry = ledger, engine, notice, on_retry
        self.space = space if space is not None else Space(config.state_dir)
        self._stranded: set[int] = set()  # rows set aside while the ledger could not record them
        self._stranding = threading.Lock()

    def reconfigure(self, config: Config, accounts: dict[str, Account]) -> None:
        """Takes effect from the next photo; the one in hand finishes with the settings it started with."""
        self._setup = (config, accounts)

    def claim(self) -> Row | None:
        """The next due row of a user whose work is not paused for want of space (space.py)."""
        config, _ = self._setup
        if self.space.ledger_paused() or not self._put_back_stranded():
            return None
        try:
            return self.ledger.claim([name for name in config.users if not self.space.paused(name)])
        except LedgerFull as e:
            self.space.ledger_full(e)
            return None

    # --- one photo ----------------------------------------------------------------------------------------

    def handle(self, row: Row) -> None:
        config, accounts = self._setup
        if row.user not in config.users:  # removed by a reload since the claim: leave it queued
            self.ledger.requeue(row.id, forget_output=False)
            return
        reached("claimed")
        user, account = config.users[row.user], accounts[row.user]
        exhausted = row.attempts > config.retry_attempts
        why = row.error or "the service stopped while processing it"
        try:
            if row.held is not None:
                self._complete_hold(row, user, account)
            elif row.delivered_at is not None and exhausted:  # published: the original just stays where it is
                log.error(
                    "%s: %s was delivered, but the original could not be handled (%s): it stays in place",
                    row.user,
                    row.path,
                    why,
                )
                self._finish(row, DONE, f"original left in place: {why}", original=row.path)
            elif row.delivered_at is not None:
                self._settle_original(row, user, account)
            elif exhausted:
                self._hold(row, user, account, f"gave up after {row.attempts - 1} attempts: {why}")
            else:
                self._produce(row, user, account)
        except LedgerFull as e:
            self.set_aside(row, e)
        except Paused as e:
            self.ledger.put_back(row.id)
            log.info("%s: %s waits: %s", row.user, row.path, e)
        except (Transient, CloakdError) as e:  # not the photo's fault (PhotoError is handled where it arises)
            self._retry(row, config, str(e))
        except OSError as e:
            if e.errno in NO_SPACE:
                self.set_aside(row, e)
            else:
                self._retry(row, config, os_error_text(e))
        except MemoryError:
            self._retry(row, config, "out of memory")
        except Exception as e:  # noqa: BLE001 - a bug must not stop the service; the row is retried, then held
            log.exception("%s: internal error on %s", row.user, row.path)
            self._retry(row, config, f"internal error: {type(e).__name__}: {e}")

    def _produce(self, row: Row, user: UserConfig, account: Account) -> None:
        path = Path(row.path)
        if user.outbound_of(path) is None:
            self._finish(row, GONE, "its folder is no longer an outbound folder (the configuration changed)")
            return
        try:
            original = read_photo(account, path, [f.path for f in user.outbound])
        except FileNotFoundError:
            self._finish(row, GONE, "the file was removed before it was processed")
            return
        except (RefusedFile, PermissionError) as e:
            reason = str(e) if isinstance(e, RefusedFile) else f"{account.name} cannot read {path}: permission denied"
            self._hold(row, user, account, reason)
            return
        if not original.via_link and (original.size, original.mtime_ns) != (row.size, row.mtime_ns):
            self._finish(row, GONE, "the file changed before it was processed; the new version is taken separately")
            self.notice(row.user, row.path)
            return
        earlier = self.ledger.record_hash(row.id, original.sha256)
        if earlier is not None and earlier.delivered_at is None:
            raise Transient(f"the same content is in progress as {earlier.path}")
        if earlier is not None:
            self.ledger.delivered(row.id, output=earlier.output)
            log.info(
                "%s: %s has the same content as %s, already delivered as %s: not cloaked again",
                row.user,
                path,
                earlier.path,
                earlier.output,
            )
            self._settle_original(self.ledger.get(row.id), user, account)
            return
        try:
            result = self.engine(user, account, original)
        except PhotoError as e:
            self._hold(row, user, account, str(e))
            return
        output = self._deliver(
            row, account, user.ready / _relative(user, path).with_suffix(result.extension), result.data
        )
        log.info(
            "%s: delivered %s -> %s (%s, %.1f s)", row.user, path, output, count(result.faces, "face"), result.seconds
        )
        self._settle_original(self.ledger.get(row.id), user, account)

    def _deliver(self, row: Row, account: Account, wanted: Path, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        while True:
            output = deliver.free_name(account, wanted)
            self.ledger.plan_output(row.id, str(output), digest)
            reached("output-planned")
            try:
                deliver.write_new(account, output, data, tag=str(row.id))
                break
            except FileExistsError:
                continue  # the name was taken since free_name looked: take the next one
            except PermissionError as e:  # a read-only ready folder: the photo waits in its outbound folder
                raise Transient(
                    f"{account.name} may not write into {_folder_of(e, output)} (permission denied): the photo "
                    f"stays where it is and is tried again"
                ) from None
        self.ledger.delivered(row.id)
        reached("delivered")
        return output

    def _settle_original(self, row: Row, user: UserConfig, account: Account) -> None:
        """Step 5: the output is durable; now the original goes where the policy says."""
        policy, path = user.originals, Path(row.path)
        if policy.policy == "keep" or (policy.policy == "delete" and policy.delete_after_days):
            self._finish(row, DONE, original=row.path)
        elif policy.policy == "delete":
            if deliver.remove(account, path, row.size, row.mtime_ns):
                log.info("%s: original deleted: %s", row.user, path)
            self._finish(row, DONE, original="")
        else:
            archived = self._move(
                row, account, path, policy.archive / _relative(user, path), row.original, self.ledger.plan_original
            )
            reached("archive-moved")
            if archived is not None:
                log.info("%s: original archived: %s", row.user, archived)
            self._finish(row, DONE, original=str(archived) if archived else "")

    def _move(
        self,
        row: Row,
        account: Account,
        source: Path,
        wanted: Path,
        planned: str | None,
        plan: Callable[[int, str], None],
        step: str = "archive",
    ) -> Path | None:
        """Move the original (if still the processed file) to a free name near ``wanted``; None if it is gone.

        A move that was ``planned`` and done before a crash is recognised and not repeated.
        """
        if not deliver.same_file(account, source, row.size, row.mtime_ns):
            return Path(planned) if planned and deliver.exists(account, Path(planned)) else None
        if planned and _copied(row, account, source, Path(planned)):
            return Path(planned)
        while True:
            destination = deliver.free_name(account, wanted)
            plan(row.id, str(destination))
            reached(f"{step}-planned")
            try:
                deliver.move_new(account, source, destination, tag=str(row.id), step=step)
                return destination
            except FileExistsError:
                continue

    # --- holding ------------------------------------------------------------------------------------------

    def _hold(self, row: Row, user: UserConfig, account: Account, reason: str) -> None:
        """Step 6: record the decision and the reason first, so that a crash midway completes the hold."""
        self.ledger.plan_held(row.id, "", reason)
        self._complete_hold(self.ledger.get(row.id), user, account)

    def _complete_hold(self, row: Row, user: UserConfig, account: Account) -> None:
        path = Path(row.path)
        wanted = user.held / _relative(user, path)
        left_in_place = False
        try:
            held = self._move(
                row, account, path, wanted, row.held, lambda i, p: self.ledger.plan_held(i, p, row.error), "hold"
            )
            reached("hold-moved")
        except PermissionError:  # e.g. the outbound folder is not writable for the user
            held, left_in_place = None, True
        if held is None and not left_in_place:
            self._finish(row, GONE, f"removed or changed before it could be held ({row.error})")
            self.notice(row.user, row.path)
            return
        where = held if held is not None else path
        note = reason_path(wanted if held is None else held)
        if not deliver.exists(account, note):
            text = _reason_text(row, where, user)
            try:
                deliver.write_new(
                    account, deliver.free_name(account, note), text.encode(), tag=f"{row.id}r", step="reason"
                )
            except OSError:
                config, _ = self._setup
                if row.attempts <= config.retry_attempts:
                    raise
                log.error(
                    "%s: cannot write the reason for %s next to it; the reason is: %s", row.user, where, row.error
                )
        log.warning("%s: held %s%s: %s", row.user, path, f" -> {held}" if held else " (left in place)", row.error)
        self._finish(row, HELD, row.error, original=str(where))

    # --- out of space -------------------------------------------------------------------------------------

    def set_aside(self, row: Row, error: Exception) -> None:
        """A write found no space: not the photo's fault. The work that needs the full place pauses (space.py),
        and the row goes back to the queue without counting the try; while the ledger itself is full, the row
        stays ``working`` and in this list until the ledger can record it again (then settled as
        :meth:`reconcile` settles an interrupted row; a restart meanwhile reconciles it anyway)."""
        config, _ = self._setup
        text = os_error_text(error) if isinstance(error, OSError) else str(error)
        self.space.full(place_of(error, config.users.get(row.user), config.state_dir), text)
        with self._stranding:
            self._stranded.add(row.id)
        self._put_back_stranded()

    def _put_back_stranded(self) -> bool:
        """Put back the rows set aside; False while the ledger is still full."""
        with self._stranding:
            for row_id in sorted(self._stranded):
                try:
                    self._put_back(row_id)
                except LedgerFull as e:
                    self.space.ledger_full(e)
                    return False
                self._stranded.discard(row_id)
        return True

    def _put_back(self, row_id: int) -> None:
        row = self.ledger.get(row_id)
        if row is None or row.state != WORKING:
            return
        self._settle_output(row)  # written into place, perhaps, before the ledger filled up
        self.ledger.put_back(row.id)

    def _settle_output(self, row: Row) -> bool | None:
        """A row interrupted after its output was planned and before it was recorded as delivered: True if the
        output is in place with the planned hash (renamed just before the interruption; now recorded), False if
        not (its temporary file removed), None if no output was pending."""
        _, accounts = self._setup
        account = accounts.get(row.user)
        if account is None or row.delivered_at is not None or not row.output:
            return None
        output = Path(row.output)
        if deliver.sha256_of(account, output) == row.output_sha256:
            self.ledger.delivered(row.id)
            return True
        deliver.remove_tmp(account, output.parent, str(row.id))
        return False

    # --- bookkeeping --------------------------------------------------------------------------------------

    def _finish(self, row: Row, state: str, error: str = "", original: str | None = None) -> None:
        self.ledger.finish(row.id, state, error, original)
        reached("done")
        if state == GONE:
            log.info("%s: %s: %s", row.user, row.path, error)

    def _retry(self, row: Row, config: Config, error: str) -> None:
        delay = min(MAX_RETRY_DELAY, config.retry_delay_seconds * 2 ** max(0, row.attempts - 1))
        at = time.time() + delay
        self.ledger.retry(row.id, error, at)
        log.warning(
            "%s: %s: %s; retry in %.0f s (attempt %d of %d)",
            row.user,
            row.path,
            error,
            delay,
            row.attempts,
            config.retry_attempts,
        )
        self.on_retry(at)

    def reconcile(self) -> int:
        """After a crash or kill: settle every row that was ``working`` from what the files show."""
        rows = self.ledger.interrupted()
        for row in rows:
            self.ledger.requeue(row.id, forget_output=self._settle_output(row) is False)
        if rows:
            log.info("resuming %s left in progress when the service stopped", count(len(rows), "photo"))
        return len(rows)


def reason_path(held: Path) -> Path:
    """``NAME.reason.txt`` beside the held ``NAME``; NAME is shortened when the whole would be too long a
    file name (a held name of 250 bytes still gets its reason)."""
    return held.with_name(fit_name(held.name, REASON_SUFFIX))


def _copied(row: Row, account: Account, source: Path, planned: Path) -> bool:
    """A move across file systems that was interrupted after its copy was in place (crash point
    ``archive-copied``): the copy at the planned name holds the original's content, so the move is completed
    by removing the source, instead of copying it again under the next free name."""
    digest = row.sha256 or deliver.sha256_of(account, source)
    if digest is None or deliver.sha256_of(account, planned) != digest:
        return False
    return deliver.remove(account, source, row.size, row.mtime_ns)


def _relative(user: UserConfig, path: Path) -> Path:
    folder = user.outbound_of(path)
    return path.relative_to(folder.path) if folder is not None else Path(path.name)


def _folder_of(error: OSError, output: Path) -> Path:
    """The folder a write was refused in: that of the file or sub-folder the error names (a temporary file,
    a sub-folder to create), not that name itself."""
    return Path(os.fsdecode(error.filename)).parent if error.filename else output.parent


def _reason_text(row: Row, where: Path, user: UserConfig) -> str:
    return (
        f"cloakd did not publish this photo.\n\n"
        f"Photo:   {where}\n"
        f"Was:     {row.path}\n"
        f"When:    {datetime.now().isoformat(timespec='seconds')}\n"
        f"Reason:  {row.error}\n\n"
        f"Nothing of it was written to {user.ready}. To try again (for example after fixing the file), move "
        f"it back into an outbound folder.\n"
    )


class Workers:
    """Worker threads: each claims a due row, handles it, and sleeps until woken when nothing is due."""

    IDLE_CHECK_SECONDS = 30.0  # a safety net: wake-ups are normally explicit

    def __init__(
        self, pipeline: Pipeline, count: int, may_work: Callable[[], bool], capacity: Callable[[], int] | None = None
    ):
        """``capacity``: how many of the ``count`` threads may hold a photo now (the engine's; None: all)."""
        self.pipeline, self.count, self.may_work, self.capacity = pipeline, count, may_work, capacity
        self._busy = 0
        self._turns = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._in_hand: dict[int, Row] = {}

    def start(self) -> None:
        for i in range(self.count):
            t = threading.Thread(target=self._loop, name=f"cloakd-worker-{i + 1}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        self._wake.set()

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def in_hand(self) -> list[Row]:
        return list(self._in_hand.values())

    def _take_turn(self) -> bool:
        """Whether this thread may claim a photo now (within the processing window and the engine's capacity)."""
        if not self.may_work():
            return False
        if self.capacity is None:
            return True
        with self._turns:
            if self._busy >= self.capacity():
                return False
            self._busy += 1
            return True

    def _end_turn(self) -> None:
        if self.capacity is not None:
            with self._turns:
                self._busy -= 1

    def _loop(self) -> None:
        me = threading.get_ident()
        while not self._stop.is_set():
            row = None
            if self._take_turn():
                try:
                    row = self.pipeline.claim()
                except Exception:  # noqa: BLE001 - the ledger is unavailable for now
                    log.exception("cannot read the ledger")
                finally:
                    if row is None:
                        self._end_turn()
            if row is None:
                self._wake.wait(self.IDLE_CHECK_SECONDS)
                self._wake.clear()
                continue
            self._in_hand[me] = row
            try:
                self.pipeline.handle(row)
            except LedgerFull as e:  # the outcome of a failure could not be recorded either
                self.pipeline.set_aside(row, e)
            except Exception:  # noqa: BLE001 - e.g. the ledger's disk is full: keep the worker alive, slow down
                log.exception("%s: %s could not be recorded", row.user, row.path)
                self._stop.wait(self.IDLE_CHECK_SECONDS)
            finally:
                del self._in_hand[me]
                self._end_turn()

    def stop(self, timeout: float) -> list[Row]:
        """Let each worker finish its photo within ``timeout``; return the rows still in hand after it."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return self.in_hand()
