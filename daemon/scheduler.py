"""The service's timed work, on an APScheduler BackgroundScheduler (its own threads, never the workers').

Jobs: periodic rescans of the outbound folders, housekeeping (retention, ledger pruning), a wake-up of the
workers at each retry's due time and at the start of each processing window. The identity issue adds its
Sybil generation jobs here, per user, at the rate the configuration sets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from .config import Config

HOUSEKEEPING_HOURS = 6
logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every run at INFO


class Jobs:
    def __init__(self, rescan: Callable[[], None], housekeeping: Callable[[], None], wake: Callable[[], None]):
        self.rescan, self.housekeeping, self.wake = rescan, housekeeping, wake
        self._scheduler = BackgroundScheduler(daemon=True, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})

    def start(self, config: Config) -> None:
        self.configure(config)
        self._scheduler.start()

    def configure(self, config: Config) -> None:
        """(Re)install the jobs for ``config`` (on start and on reload)."""
        s = self._scheduler
        s.add_job(self.rescan, "interval", seconds=config.rescan_seconds, id="rescan", replace_existing=True)
        s.add_job(self.housekeeping, "interval", hours=HOUSEKEEPING_HOURS, id="housekeeping", replace_existing=True,
                  next_run_time=datetime.now() + timedelta(minutes=1))
        for job in s.get_jobs():
            if job.id.startswith("window-"):
                job.remove()
        for i, window in enumerate(config.windows):
            s.add_job(self.wake, "cron", hour=window.start // 60, minute=window.start % 60, id=f"window-{i}")

    def wake_at(self, when: float) -> None:
        """Wake the workers when a retry becomes due."""
        self._scheduler.add_job(self.wake, "date", run_date=datetime.fromtimestamp(when + 0.05),
                                misfire_grace_time=None)

    def soon(self, job: Callable[[], None]) -> None:
        """Run ``job`` once, now, in the scheduler's threads."""
        self._scheduler.add_job(job, "date", run_date=datetime.now(), misfire_grace_time=None)

    def running(self) -> bool:
        return self._scheduler.running

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
