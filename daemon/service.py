"""``cloakd run``: the long-running service, in the foreground (systemd runs it as Type=notify).

Start: configuration -> ledger -> models (once) -> crash reconciliation -> watchers, startup scan ->
workers -> scheduled jobs -> READY=1. The main thread then runs a short loop: takes candidates that have
become stable into the ledger, pings the systemd watchdog while every part is alive, publishes STATUS=,
and acts on signals (SIGHUP: reload the configuration; SIGTERM/SIGINT: stop).

One photo's path through the code: watch.py (candidate, stable) -> ledger.py (queued) -> worker.py
(claimed) -> privileges.py (read as the user) -> process.py (protect) -> deliver.py (ready) -> worker.py
(original per policy). Beside them, per user with a ``sybil:`` section, the scheduler's Sybil job (sybil.py)
makes Sybil images in the background, whenever no photo is waiting.

Stopping: the watchers and scheduler stop at once; each worker finishes its photo if it can within
``stop_timeout_seconds``, otherwise the process exits anyway and the ledger's reconciliation redoes that
photo on the next start (the interruption does not count as an attempt).

A full disk (a user's ready, held or archive folder, or the state directory) pauses the work that needs it
and resumes by itself once space is freed (space.py): the main loop probes the paused places, and takes no
new file into the ledger while the state directory is full. A state directory full at start is such a
pause too: the service waits (still starting for systemd, STATUS= says why) and goes on once space is freed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from cloakd.core.errors import CloakdError, os_error_text

from .config import Config, load_config
from .deliver import make_folder
from .engine.status import EngineState, publish
from .housekeeping import housekeeping
from .ledger import Ledger, LedgerFull
from .privileges import Account, check_single_user
from .running import record_start, record_stop
from .scheduler import Jobs
from .sdnotify import notify, watchdog_period
from .space import Space
from .sybil import photos_waiting
from .watch import Candidates, Watcher
from .words import count
from .worker import Pipeline, Workers

log = logging.getLogger("cloakd")
T = TypeVar("T")
TICK_SECONDS = 0.5
STATUS_SECONDS = 10.0
#: while start-up waits for space: how much longer systemd should wait for READY=1, said every half of it
EXTEND_SECONDS = 60.0
#: the time the rest of start-up (models, reconciliation, rescan) gets after such a wait: the units' TimeoutStartSec
START_SECONDS = 300.0
ENQUEUE_BATCH = 500  # files queued per transaction


class OneLine(logging.Formatter):
    """A message is one line, whatever it quotes: a newline or carriage return in a file name (which a user
    may choose) is written as ``\\n``/``\\r``, so no name can start a line that looks like another event.
    Tracebacks of internal errors keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).replace("\n", "\\n").replace("\r", "\\r")


def setup_logging(level: str) -> None:
    """One line per event on stderr; journald adds the time itself, a terminal gets it from us."""
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine(f"{stamp}%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler], force=True)
    logging.getLogger().setLevel(level.upper())
    logging.getLogger("watchdog").setLevel(max(logging.INFO, logging.getLogger().level))  # one line per inotify event


def accounts_for(config: Config) -> dict[str, Account]:
    """Each user's unix account; also creates held folders that do not exist yet (as their user)."""
    accounts = {name: Account.lookup(user.account) for name, user in config.users.items()}
    check_single_user(list(accounts.values()))
    for name, user in config.users.items():
        try:
            make_folder(accounts[name], user.held)
        except OSError as e:
            raise CloakdError(
                f"user {name}: cannot create the held folder as {user.account}: "
                f"{os_error_text(e, user.held)}; fix: create it (mkdir -p {user.held}; "
                f"chown {user.account} {user.held}) or set `held:` to a folder of {user.account}"
            ) from None
    return accounts


class Service:
    def __init__(self, config_path: Path):
        self.config_path = config_path
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._publishing = threading.Lock()  # the engine's watcher thread and start-up both publish
        self.workers: Workers | None = None
        self.ledger: Ledger | None = None
        self._recorded = False

    def run(self) -> int:
        config = load_config(self.config_path)
        setup_logging(config.log_level)
        accounts = accounts_for(config)
        self.config = config
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self._recorded = self._record(record_start, "start")
        self.space = Space(config.state_dir, on_resume=self._wake)
        self.space.publish()  # nothing paused yet (a record of an earlier run is replaced)
        self.ledger = self._when_state_has_space(lambda: Ledger(config.state_dir))
        if self.ledger is None:  # stopped while waiting for space
            return self._stopped_while_starting(None)
        self._record_start_again()
        notify("STATUS=loading the face models")
        engine = self._engine(config)
        if self._stop.is_set():
            return self._stopped_while_starting(engine)
        self.candidates = Candidates(config.stable_seconds)
        self.jobs = Jobs(rescan=self._rescan, housekeeping=self._housekeeping, wake=self._wake, sybil=self._sybil)
        self.pipeline = Pipeline(
            config,
            accounts,
            self.ledger,
            engine,
            notice=self.candidates.note,
            on_retry=self.jobs.wake_at,
            space=self.space,
        )
        self._engine_changed(engine.state())
        if self._when_state_has_space(self.pipeline.reconcile) is None or self._stop.is_set():
            return self._stopped_while_starting(engine)
        self.accounts = accounts
        self.watcher = Watcher(config, accounts, self.candidates)
        self.watcher.start()
        self.watcher.rescan()
        self.workers = Workers(
            self.pipeline, engine.threads, lambda: self.config.in_window(datetime.now()), engine.capacity
        )
        self.workers.start()
        self.jobs.start(config)
        due = self.ledger.next_due()
        if due is not None and due > time.time():
            self.jobs.wake_at(due)
        log.info(
            "started: %s, %s, engine %s",
            count(len(config.users), "user"),
            count(sum(len(u.outbound) for u in config.users.values()), "outbound folder"),
            engine.describe(),
        )
        notify("READY=1", f"STATUS={self._status()}")
        self._loop()
        return self._shutdown()

    def _when_state_has_space(self, step: Callable[[], T]) -> T | None:
        """``step()``, which writes to the ledger at start-up. While it finds the state directory full, the
        service does not exit (systemd would start it again every RestartSec, loading the models each time):
        it pauses as it does mid-run (said once in the log, shown by ``cloakd status`` and in systemd's STATUS=
        line, while EXTEND_TIMEOUT_USEC keeps systemd from counting a start that hangs) and tries ``step``
        again once space is freed. None if the service is stopped while it waits."""
        while True:
            try:
                return step()
            except LedgerFull as e:
                self.space.ledger_full(e)
            notify(f"STATUS={self.space.text()}")
            extended = 0.0
            while self.space.ledger_paused():
                if time.monotonic() - extended >= EXTEND_SECONDS / 2:
                    notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_SECONDS * 1e6)}")
                    extended = time.monotonic()
                if self._stop.wait(TICK_SECONDS):
                    return None
                self.space.probe()
            notify(f"EXTEND_TIMEOUT_USEC={int(START_SECONDS * 1e6)}")  # the rest of start-up: the unit's own time

    def _stopped_while_starting(self, engine) -> int:
        """A stop (SIGTERM, SIGINT) during start-up: nothing was taken yet, so nothing is left in hand."""
        notify("STOPPING=1", "STATUS=stopping")
        log.info("stopped while starting")
        if engine is not None:
            engine.close()
        if self.ledger is not None:
            self.ledger.close()
        self._record(record_stop, "stop")
        return 0

    def _record_start_again(self) -> None:
        """Record the start if the state directory was too full to take it (tried again until it is done)."""
        if not self._recorded:
            self._recorded = self._record(record_start, "start", quiet=True)

    def _engine(self, config: Config):
        """Load the models once (the service needs them also with a Dask cluster: target classes, references,
        Sybil images, re-verification, local fallback); import here so that the rest of the service (and its
        tests) need no torch."""
        import torch

        from .engine.device import load_analyzer
        from .engine.factory import open_engine
        from .identity import UserReferences
        from .process import ProcessContext
        from .sybil import SybilJob
        from .targets import TargetStore

        torch.set_num_threads(config.torch_threads)
        t0 = time.perf_counter()
        analyzer, device = load_analyzer(config.engine.device)
        references = UserReferences(analyzer, config.state_dir)
        context = ProcessContext(analyzer, TargetStore(config.state_dir), references)
        self.sybil = SybilJob(analyzer, references, config.state_dir, busy=self._photos_waiting)
        log.info(
            "face models loaded in %.1f s on %s (torch threads: %d)",
            time.perf_counter() - t0,
            device,
            config.torch_threads,
        )
        self.engine = open_engine(config, context, str(device), self._engine_changed)
        return self.engine

    def _engine_changed(self, state: EngineState) -> None:
        """The engine's state changed (a Dask cluster came or went): tell `cloakd status`, wake the workers."""
        try:
            with self._publishing:
                publish(self.config.state_dir, state)
        except OSError as e:
            log.warning("cannot record the engine's state for `cloakd status`: %s", os_error_text(e))
        workers = getattr(self, "workers", None)
        if workers is not None:
            workers.wake()

    def _record(self, record, what: str, quiet: bool = False) -> bool:
        """Record the service's start or stop in its state directory, for `cloakd status`; False if it cannot."""
        try:
            record(self.config.state_dir)
        except OSError as e:
            (log.debug if quiet else log.warning)(
                "cannot record the service's %s for `cloakd status`: %s", what, os_error_text(e)
            )
            return False
        return True

    def _loop(self) -> None:
        period = watchdog_period()
        last_ping = last_status = 0.0
        while not self._stop.wait(TICK_SECONDS):
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
            self.space.probe()
            self._take_stable()
            if self.watcher.rescan_wanted():
                self.jobs.soon(self._rescan)
            now = time.monotonic()
            if period and now - last_ping >= period and self._healthy():
                notify("WATCHDOG=1")
                last_ping = now
            if now - last_status >= STATUS_SECONDS:
                notify(f"STATUS={self._status()}")
                self._record_start_again()
                last_status = now

    def _take_stable(self) -> None:
        """Queue the candidates that have become stable: in batches of one transaction each (a full outbound
        folder at start-up is thousands of files, and every transaction is a sync to disk). While the ledger's
        disk is full they wait as candidates."""
        if self.space.ledger_paused():
            return  # the ledger cannot record them: the candidates wait
        stable = [
            (user, path, st)
            for user, path, st in self.candidates.take_stable(self.accounts)
            if self.config.users[user].outbound_of(Path(path)) is not None  # else removed by a reload
        ]
        queued = 0
        for start in range(0, len(stable), ENQUEUE_BATCH):
            batch = stable[start : start + ENQUEUE_BATCH]
            try:
                ids = self.ledger.enqueue_many([(user, path, st.st_size, st.st_mtime_ns) for user, path, st in batch])
            except LedgerFull as e:
                self.space.ledger_full(e)
                for later_user, later_path, _ in stable[start:]:
                    self.candidates.note(later_user, later_path)  # taken again once the ledger has space
                break
            for (user, path, _), row_id in zip(batch, ids):
                if row_id is not None:
                    log.info("%s: queued %s", user, path)
                    queued += 1
        if queued:
            self._wake()

    def _healthy(self) -> bool:
        """The watchdog is fed only while the workers, the watchers and the scheduler are all running."""
        return self.workers.alive() and self.watcher.alive() and self.jobs.running()

    def _status(self) -> str:
        counts = self.ledger.counts()
        queued = sum(c.queued for c in counts.values())
        working = sum(c.working for c in counts.values())
        done = sum(c.done for c in counts.values())
        held = sum(c.held for c in counts.values())
        window = "" if self.config.in_window(datetime.now()) else ", outside the processing window"
        paused = self.space.text()
        return (
            f"{paused + '; ' if paused else ''}{queued} queued, {working} in progress, {done} done, {held} held"
            f"{window}; {self.engine.describe()}"
        )

    def _wake(self) -> None:
        if self.workers is not None:  # None while start-up waits for space
            self.workers.wake()

    def _rescan(self) -> None:
        self.watcher.rescan()

    def _housekeeping(self) -> None:
        if self.space.ledger_paused():
            return  # at its next run
        try:
            housekeeping(self.config, self.accounts, self.ledger)
        except LedgerFull as e:
            self.space.ledger_full(e)

    def _sybil(self, name: str) -> None:
        config, accounts = self.config, self.accounts
        if name in config.users:  # else removed by a reload since the tick was planned
            self.sybil.run(config.users[name], accounts[name])

    def _photos_waiting(self) -> str:
        return photos_waiting(self.config, self.ledger, self.candidates)

    def _do_reload(self) -> None:
        """Apply a changed configuration without dropping work: queued photos stay queued in the ledger,
        the photo in hand finishes with the settings it started with. An invalid file changes nothing."""
        notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            config = load_config(self.config_path)
            accounts = accounts_for(config)
        except Exception as e:  # noqa: BLE001 - any failure keeps the running configuration
            log.error("reload refused, keeping the running configuration: %s", e)
            notify("READY=1")
            return
        for key in ("state_dir", "workers", "torch_threads", "engine"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("reload: %s changed; this takes effect after a restart", key)
        setup_logging(config.log_level)
        self.watcher.stop()
        self.config, self.accounts = config, accounts
        self.candidates.stable_seconds = config.stable_seconds
        self.pipeline.reconfigure(config, accounts)
        self.watcher = Watcher(config, accounts, self.candidates)
        self.watcher.start()
        self.jobs.configure(config)
        self.jobs.soon(self._rescan)  # whatever arrived while no watcher was running
        self._wake()
        log.info("configuration reloaded: %s", count(len(config.users), "user"))
        notify("READY=1", f"STATUS={self._status()}")

    def _shutdown(self) -> int:
        notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping")
        self.watcher.stop()
        self.jobs.shutdown()
        self.sybil.stop()
        abandoned = self.workers.stop(self.config.stop_timeout_seconds)
        for row in abandoned:
            try:
                self.ledger.forgive(row.id)
            except LedgerFull:  # the restart's reconciliation redoes it all the same (counted as a try)
                pass
            log.warning("%s: %s abandoned at stop; it is redone on the next start", row.user, row.path)
        if self.sybil.in_hand():
            log.info("a Sybil image in progress was abandoned at stop; it is made again later")
        self.engine.close()
        self._record(record_stop, "stop")
        if abandoned or self.sybil.in_hand():
            # a thread is still inside the engine: leave without running interpreter clean-up under it
            logging.shutdown()
            os._exit(0)
        self.ledger.close()
        log.info("stopped")
        return 0
