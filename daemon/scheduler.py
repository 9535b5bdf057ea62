"""The service's timed work, on an APScheduler BackgroundScheduler (its own threads, never the workers').

Jobs: periodic rescans of the outbound folders, housekeeping (retention, ledger pruning), a wake-up of the
workers at each retry's due time and at the start of each processing window, and per user with a ``sybil:``
section a Sybil job (daemon/sybil.py). That job ticks at the user's rate, or hourly for rates below one an
hour, and makes an image only when one is due by the record of the last one made: a restart or a reload
(which installs the jobs afresh, first tick within a minute) never exceeds the rate, and a tick skipped
because photos were waiting is made up within the hour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from .config import Config
from .sybil import tick_seconds

HOUSEKEEPING_HOURS = 6
logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every run at INFO


class Jobs:
    def __init__(
        self,
        rescan: Callable[[], None],
        housekeeping: Callable[[], None],
        wake: Callable[[], None],
        sybil: Callable[[str], None],
    ):
        self.rescan, self.housekeeping, self.wake, self.sybil = rescan, housekeeping, wake, sybil
        self._scheduler = BackgroundScheduler(
            daemon=True, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600}
        )

    def start(self, config: Config) -> None:
        self.configure(config)
        self._scheduler.start()

    def configure(self, config: Config) -> None:
        """(Re)install the jobs for ``config`` (on start and on reload)."""
        s = self._scheduler
        s.add_job(self.rescan, "interval", seconds=config.rescan_seconds, id="rescan", replace_existing=True)
        s.add_job(
            self.housekeeping,
            "interval",
            hours=HOUSEKEEPING_HOURS,
            id="housekeeping",
            replace_existing=True,
            next_run_time=datetime.now() + timedelta(minutes=1),
        )
        for job in s.get_jobs():
            if job.id.startswith(("window-", "sybil-")):
                job.remove()
        for i, window in enumerate(config.windows):
            s.add_job(self.wake, "cron", hour=window.start // 60, minute=window.start % 60, id=f"window-{i}")
        for name, user in config.users.items():
            if user.sybil is not None:
                tick = tick_seconds(user.sybil.per_day)
                # max_instances 2: a tick while an image is in hand returns at once (sybil.SybilJob), instead
                # of being logged by APScheduler as a skipped run
                s.add_job(
                    self.sybil,
                    "interval",
                    args=[name],
                    seconds=tick,
                    id=f"sybil-{name}",
                    max_instances=2,
                    next_run_time=datetime.now() + timedelta(seconds=min(tick, 60.0)),
                )

    def wake_at(self, when: float) -> None:
        """Wake the workers when a retry becomes due."""
        self._scheduler.add_job(
            self.wake, "date", run_date=datetime.fromtimestamp(when + 0.05), misfire_grace_time=None
        )

    def soon(self, job: Callable[[], None]) -> None:
        """Run ``job`` once, now, in the scheduler's threads."""
        self._scheduler.add_job(job, "date", run_date=datetime.now(), misfire_grace_time=None)

    def running(self) -> bool:
        return self._scheduler.running

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
