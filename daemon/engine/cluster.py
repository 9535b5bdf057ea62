"""``kind: dask``: each photo's protect() runs on a worker of a Dask cluster; the service stays the writer.

A worker thread of the service (worker.py) claims a row, reads the photo with the user's rights and builds
the request (process.py) as for local work; here the photo's faces are found (core/examined.py), and the
photo's bytes, the request with those faces and a neutral label (``photo <hash>``: no path, no account) go
to the cluster as one task (remote.py); what comes back is checked again (core/recheck.py: metadata, size,
and every one of those faces' cloaks, from the original) before worker.py delivers it. A task that raised
on the worker raises here (a PhotoError holds the photo, as locally); a photo whose faces cannot be found
here (a damaged file) is held without being sent.

Capacity: as many photos in flight as the cluster's cloakd workers have threads, plus one queued at the
scheduler so that no worker waits for the service between two photos. Work is claimed from the ledger
only when a slot is free, so the ledger's order (round-robin over users) is the order the cluster sees.

Faults:
- a worker dies with a photo: the scheduler runs the task again on another worker (after a photo has
  ended ``distributed.scheduler.allowed-failures`` + 1 workers it fails with KilledWorker: retried later,
  held after ``retry.attempts``, as any failure that is not the photo's fault);
- the scheduler is unreachable (at start, or with photos in flight): a watcher thread reconnects every
  few seconds; meanwhile photos wait in the queue (``fallback: wait``; a photo in flight goes back without
  counting as an attempt) or are protected here (``fallback: local``). The same holds while the cluster
  has no cloakd worker. :meth:`DaskEngine.describe` says which, for ``cloakd status``;
- the service dies with photos in flight: their rows are ``working`` in the ledger and are redone on the
  next start (worker.Pipeline.reconcile); the cluster forgets a dead client's tasks.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field, replace

from cloakd.core.errors import CloakdError, ProtectionError
from cloakd.core.examined import examine_photo
from cloakd.core.recheck import recheck

from ..config import Config
from ..privileges import Account, Original
from ..process import ProcessContext, ProcessResult, request_for
from ..worker import Paused, Transient
from .remote import RESOURCE, VERSION, protect_task
from .security import security
from .status import CONNECTED, FALLBACK, NO_SCHEDULER, NO_WORKER, EngineState, iso

log = logging.getLogger("cloakd.engine")

#: worker threads of the service: the most photos in flight at once (the cluster's threads + 1)
MAX_IN_FLIGHT = 64
CONNECT_TIMEOUT_SECONDS = 5.0
#: how often the watcher looks at the connection and the workers, and a waiting photo at the connection
CHECK_SECONDS = 2.0
#: the most of a worker's reason for a photo it could not protect that goes into the ledger and the held reason
REASON_CHARS = 400


@dataclass
class Overheads:
    """What the cluster costs the service, summed over the photos it delivered (bench/scale.py reads it):
    the round trip beyond the worker's own protect() (serialisation, transfer, scheduling), and the
    re-verification here."""

    photos: int = 0
    remote_seconds: float = 0.0
    round_trip_seconds: float = 0.0
    recheck_seconds: float = 0.0
    #: finding the faces before sending the photo: work moved from the worker, not added
    examine_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, remote: float, round_trip: float, rechecked: float, examined: float) -> None:
        with self.lock:
            self.photos += 1
            self.remote_seconds += remote
            self.round_trip_seconds += round_trip
            self.recheck_seconds += rechecked
            self.examine_seconds += examined


class DaskEngine:
    threads = MAX_IN_FLIGHT

    def __init__(
        self,
        config: Config,
        context: ProcessContext,
        local: Callable[..., ProcessResult],
        local_threads: int,
        on_change: Callable[[EngineState], None],
    ):
        settings = config.engine
        self.address = settings.scheduler
        self._security = security(self.address, settings.tls_ca, settings.tls_cert, settings.tls_key, "client")
        self.context, self.on_change = context, on_change
        self._fallback = settings.fallback
        self._local = local if settings.fallback == "local" else None
        self._local_threads = local_threads
        self.overheads = Overheads()
        self._client = None
        self._slots = 0  # cloakd worker threads in the cluster (0: none, or not connected)
        self._trouble = "connecting to the scheduler"
        self._since = time.time()
        self._said = ""
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="cloakd-dask", daemon=True)
        self._watcher.start()

    # --- capacity and state -----------------------------------------------------------------------------

    def capacity(self) -> int:
        if self._client is not None and self._slots > 0:
            return self._slots + 1
        return self._local_threads if self._local is not None else 0

    def state(self) -> EngineState:
        if self._client is not None and self._slots > 0:
            state, detail = CONNECTED, f"{self._slots} cloakd worker thread{'s' if self._slots != 1 else ''}"
        else:
            state = FALLBACK if self._local is not None else NO_SCHEDULER if self._client is None else NO_WORKER
            detail = self._trouble
        return EngineState("dask", state, detail, iso(self._since), self.address, self._fallback)

    def describe(self) -> str:
        return self.state().text()

    def _set(self, client, slots: int, trouble: str = "") -> None:
        if (client is not None and slots > 0) != (self._client is not None and self._slots > 0):
            self._since = time.time()  # the cluster came or went
        self._client, self._slots, self._trouble = client, slots, trouble
        state = self.state()
        if state.text() != self._said:
            self._said = state.text()
            (log.info if slots else log.warning)("engine: %s", self._said)
            self.on_change(state)

    # --- the watcher ------------------------------------------------------------------------------------

    def _watch(self) -> None:
        from distributed import Client

        client = None
        while not self._stop.is_set():
            if client is None:
                try:
                    client = Client(
                        self.address,
                        security=self._security,
                        timeout=CONNECT_TIMEOUT_SECONDS,
                        set_as_default=False,
                        name="cloakd-service",
                    )
                except Exception as e:  # noqa: BLE001 - OSError, TimeoutError...: try again later
                    self._set(None, 0, f"scheduler unreachable ({_short(e)})")
                    self._stop.wait(CHECK_SECONDS)
                    continue
            if client.status != "running":
                if client.status in ("closing", "closed"):
                    _close(client)
                    client = None
                self._set(None, 0, "scheduler connection lost")
            else:
                try:
                    slots = _cloakd_threads(client.scheduler_info())
                except Exception as e:  # noqa: BLE001 - the connection broke meanwhile
                    self._set(None, 0, f"scheduler connection lost ({_short(e)})")
                else:
                    self._set(client, slots, "" if slots else "connected, but no cloakd worker")
            self._stop.wait(CHECK_SECONDS)
        if client is not None:
            _close(client)

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(CHECK_SECONDS)  # a daemon thread: one still connecting ends with the process

    # --- one photo --------------------------------------------------------------------------------------

    def __call__(self, user, account: Account, original: Original) -> ProcessResult:
        client = self._client
        if client is None or self._slots == 0:
            if self._local is not None:
                return self._local(user, account, original)
            raise Paused(f"the Dask cluster cannot take photos now ({self._trouble})")
        t0 = time.perf_counter()
        request = request_for(self.context, user, account, original)
        found = time.perf_counter()
        examined = examine_photo(self.context.analyzer, original.data, request.max_pixels, str(original.path))
        request = replace(request, examined=examined)  # the worker cloaks these faces; recheck() checks them
        label = f"photo {original.sha256[:12]}"
        sent = time.perf_counter()
        try:
            future = client.submit(
                protect_task,
                original.data,
                request,
                label,
                VERSION,
                key=f"cloakd-{uuid.uuid4().hex}",
                resources={RESOURCE: 1},
                pure=False,
            )
        except Exception as e:  # noqa: BLE001 - the client closed since it was looked at
            raise Paused(f"the Dask client cannot send the photo now ({_short(e)})") from None
        try:
            result = self._wait(client, future, label, str(original.path))
        finally:
            future.release()
        returned = time.perf_counter()
        if not result.ok:  # the worker's own words, in one line and not too many of them
            reason = " ".join(str(result.reason).split())[:REASON_CHARS].replace(label, str(original.path))
            raise ProtectionError(f"not protected: {reason}")
        checked = recheck(self.context.analyzer, original.data, result.data, request, label=str(original.path))
        done = time.perf_counter()
        self.overheads.add(result.seconds, returned - sent, done - returned, sent - found)
        # the file's name and the face count are the service's own findings, not the worker's report
        faces = len(examined.faces)
        return ProcessResult(data=result.data, extension=checked.extension, faces=faces, seconds=done - t0)

    def _wait(self, client, future, label: str, path: str):
        from distributed import KilledWorker

        while True:
            try:
                return future.result(timeout=CHECK_SECONDS)
            except TimeoutError:
                if self._stop.is_set() or self._client is not client:
                    raise Paused("the connection to the Dask scheduler was lost with the photo in hand") from None
            except KilledWorker as e:
                raise Transient(
                    f"the photo's task ended {e.allowed_failures + 1} Dask workers (out of memory?)"
                ) from None
            except CloakdError as e:  # raised by protect() on the worker
                raise _relabelled(e, label, path) from None
            except (CancelledError, OSError) as e:
                self._slots = 0  # until the watcher has looked again: claim nothing more meanwhile
                raise Paused(f"the Dask scheduler went away with the photo in hand ({_short(e)})") from None


def _cloakd_threads(info: dict) -> int:
    return int(sum(w.get("resources", {}).get(RESOURCE, 0) for w in info.get("workers", {}).values()))


def _relabelled(e: CloakdError, label: str, path: str) -> CloakdError:
    """The worker's error with the photo's path instead of the neutral label the worker saw."""
    try:
        return type(e)(str(e).replace(label, path))
    except Exception:  # noqa: BLE001 - an error class with another signature: keep it as it is
        return e


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]


def _close(client) -> None:
    try:
        client.close(timeout=CHECK_SECONDS)
    except Exception:  # noqa: BLE001 - already gone
        pass
