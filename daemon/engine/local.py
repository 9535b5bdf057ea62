"""``kind: local``: each photo's protect() runs in the service's own worker threads, as it always did."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ..config import Config
from ..privileges import Account, Original
from ..process import ProcessContext, ProcessResult, protect_original


class LocalEngine:
    """``threads`` worker threads, each with one photo at a time (``capacity`` None: no limit beyond that)."""

    capacity = None

    def __init__(self, config: Config, context: ProcessContext, device: str = "cpu"):
        self.threads = config.workers
        self.device = device
        self._protect: Callable[..., ProcessResult] = partial(protect_original, context)

    def __call__(self, user, account: Account, original: Original) -> ProcessResult:
        return self._protect(user, account, original)

    def describe(self) -> str:
        return f"local: {self.threads} worker thread{'s' if self.threads != 1 else ''} on {self.device}"

    def close(self) -> None:
        pass
