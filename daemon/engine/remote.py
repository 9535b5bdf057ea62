"""What runs on a Dask worker: the face models, loaded once per worker process, and the one task.

The task is one photo's :func:`cloakd.core.protect.protect`: the photo's bytes, the request (target,
references, mode, metadata to keep, and the photo's faces as the service found them, which the worker
cloaks without looking for faces again) and a neutral label in; the ProtectResult (verified bytes and the
report) out. A worker never sees a path, an account, the configuration or the ledger, and writes nothing.

``cloakd worker`` installs :class:`Models` as a worker plugin, so the models are loaded (and a missing
model file is an error) before the worker joins the cluster. A plain ``dask worker`` with cloakd installed
works too: its first task loads them.

Tasks ask for the worker resource ``cloakd`` (one unit per photo); ``cloakd worker`` offers one unit per
thread, so photos go only to cloakd's workers even on a cluster shared with other work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from importlib.metadata import version as installed_version
from typing import TYPE_CHECKING

from distributed import WorkerPlugin

from cloakd.core.errors import CloakdError

if TYPE_CHECKING:
    from cloakd.core.faces import FaceAnalyzer
    from cloakd.core.protect import ProtectRequest, ProtectResult

log = logging.getLogger("distributed.worker.cloakd")  # shown by the worker's own log set-up

VERSION = installed_version("cloakd")
RESOURCE = "cloakd"
PLUGIN_NAME = "cloakd-models"

_lock = threading.Lock()
_loaded: dict[str, "FaceAnalyzer"] = {}


class EngineMismatch(CloakdError):
    """The worker runs another version of cloakd than the service."""


def models(device: str = "auto", torch_threads: int = 1) -> "FaceAnalyzer":
    """This process's face models (loaded on first call, then shared by the worker's threads)."""
    with _lock:
        if "analyzer" not in _loaded:
            import torch

            from .device import load_analyzer

            torch.set_num_threads(torch_threads)
            analyzer, where = load_analyzer(device)
            log.info("cloakd %s: face models loaded on %s (torch threads: %d)", VERSION, where, torch_threads)
            _loaded["analyzer"] = analyzer
        return _loaded["analyzer"]


class Models(WorkerPlugin):
    """Loads the models when the worker starts (in a thread: the worker's event loop keeps running)."""

    name = PLUGIN_NAME

    def __init__(self, device: str = "auto", torch_threads: int = 1):
        self.device, self.torch_threads = device, torch_threads

    async def setup(self, worker) -> None:
        await asyncio.to_thread(models, self.device, self.torch_threads)


def protect_task(data: bytes, request: "ProtectRequest", label: str, version: str) -> "ProtectResult":
    """One photo (Dask runs this on a worker). PhotoError and the like travel back to the service as
    raised; EngineMismatch if the worker's cloakd is another version than the service's."""
    from cloakd.core.protect import protect

    if version != VERSION:
        raise EngineMismatch(
            f"this Dask worker runs cloakd {VERSION}, the service {version}: install the same version on both"
        )
    return protect(models(), data, request, label=label)
