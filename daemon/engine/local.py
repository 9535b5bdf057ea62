"""``kind: local``: each photo's protect() runs in the service's own worker threads, as it always did."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from ..config import Config
from ..privileges import Account, Original
from ..process import ProcessContext, ProcessResult, protect_original
from .status import LOCAL, EngineState, iso


class LocalEngine:
    """``threads`` worker threads, each with one photo at a time (``capacity`` None: no limit beyond that)."""

    capacity = None

    def __init__(self, config: Config, context: ProcessContext, device: str = "cpu"):
        self.threads = config.workers
        self.device = device
        self._since = iso(time.time())
        self._protect: Callable[..., ProcessResult] = partial(protect_original, context)

    def __call__(self, user, account: Account, original: Original) -> ProcessResult:
        return self._protect(user, account, original)

    def state(self) -> EngineState:
        detail = f"{self.threads} worker thread{'s' if self.threads != 1 else ''} on {self.device}"
        return EngineState("local", LOCAL, detail, self._since)

    def describe(self) -> str:
        return self.state().text()

    def close(self) -> None:
        pass
