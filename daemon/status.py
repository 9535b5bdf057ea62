"""What the service is doing: one typed snapshot of whether it runs (from the record it keeps of its start
and stop, daemon/running.py), of its engine (as the service last published it, daemon/engine/status.py),
of what waits for disk space (daemon/space.py: as the service published it, and the state directory's free
space, probed) and of each user, read from the ledger (opened read-only) and the state
directory's records. Nothing is written and no photo is read; a record that cannot be read leaves its
field None and says why in ``unreadable``. ``cloakd status`` renders it as a table (the service's and the
engine's lines first) or (``--json``) as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from cloakd.core.errors import CloakdError

from .config import Config, UserConfig
from .engine.status import EngineState, read_published
from .running import read_record
from .space import Pause, paused_now


@dataclass(frozen=True)
class SybilStatus:
    made: int | None  # Sybil images made (None: the record is unreadable)
    left: int | None  # candidates not looked at yet (None: the candidates folder cannot be listed)


@dataclass(frozen=True)
class UserStatus:
    name: str
    queued: int
    in_progress: int
    done: int
    held: int
    enrolled: int | None  # enrolled reference photos (None: the record is unreadable)
    #: cloak extractors the enrolment has no descriptors by (enrolled before they existed): Sybil images pull
    #: towards the user only in the other spaces (a references folder completes them in the service)
    enrolled_lacks: list[str]
    references_folder: bool  # whether a references: folder adds photos (only the service describes them)
    target: str | None  # the target class (None: not chosen yet, or unreadable)
    sybil: SybilStatus | None  # None: the user has no sybil: section
    last_error: str  # the most recent error (held reason or pending retry), with its time; "" when none
    #: what could not be read ("target", "references", "sybil", "sybil candidates"), with why
    unreadable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceStatus:
    """Whether the service runs with this state directory: from the record it writes when it starts and when it
    stops (``STATE/service.json``), checked against the process table (the pid must be alive and be the
    process that started then, not another one that got the pid later)."""

    running: bool
    pid: int | None  # the running service's pid, or the last one's (None: no service has recorded a start)
    started_at: str | None  # when it started (ISO 8601)
    stopped_at: str | None  # when it stopped cleanly (ISO 8601; None while it runs, or if it ended otherwise)


@dataclass(frozen=True)
class EngineStatus:
    """Who runs each photo's protect() (README, "Several machines"): the configured engine, and the state the
    service last published (``kind`` to ``fallback`` None if it has published none)."""

    configured: str  # the configuration's engine: "local" or "dask ADDRESS"
    service_running: bool | None  # whether the service that published the state still runs (None: none did)
    published_at: str | None  # when it published the state (ISO 8601)
    kind: str | None  # "local" or "dask"
    state: str | None  # "working locally", "connected", "waiting for the scheduler", "waiting for a cloakd
    # worker" or "working locally (fallback: local)"
    detail: str | None  # e.g. "2 worker threads on cpu", "2 cloakd worker threads", "scheduler unreachable (...)"
    since: str | None  # when this state began (ISO 8601)
    scheduler: str | None  # kind dask: the scheduler's address
    fallback: str | None  # kind dask: "wait" or "local"

    def published(self) -> EngineState | None:
        """The published state, None if there is none."""
        if self.kind is None:
            return None
        return EngineState(**{f.name: getattr(self, f.name) for f in fields(EngineState)})


@dataclass(frozen=True)
class Status:
    state_dir: str
    service: ServiceStatus
    engine: EngineStatus
    users: list[UserStatus]
    #: places found full (a user's folder, or the state directory), whose work waits until space is freed
    paused: list[Pause] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def snapshot(config: Config) -> Status:
    """Every configured user's status. CloakdError when the ledger does not exist or cannot be read."""
    from .ledger import FILE_NAME, Ledger
    from .targets import TargetStore

    paused = paused_now(config.state_dir)
    state_full = any(p.user is None for p in paused)
    try:
        size = (config.state_dir / FILE_NAME).stat().st_size
    except FileNotFoundError:
        size = 0
    if size == 0:  # no ledger yet, or SQLite could not write its first page
        if not state_full:
            raise CloakdError(f"no ledger in {config.state_dir}: the service has not run with this configuration yet")
        counts = {}  # the state directory is full: the service waits to create its ledger
    else:
        try:
            counts = Ledger(config.state_dir, readonly=True).counts()
        except Exception as e:  # sqlite3 errors: usually no permission on the state directory, or no space
            if state_full:
                raise CloakdError(
                    f"cannot read the ledger in {config.state_dir}: its file system is full (SQLite needs a little "
                    f"space even to read it); the service waits until space is freed there"
                ) from None
            raise CloakdError(
                f"cannot read the ledger in {config.state_dir}: {e} (run as the service's user)"
            ) from None
    store = TargetStore(config.state_dir)
    users = []
    for name, user in config.users.items():
        c, unreadable = counts.get(name), {}
        users.append(
            UserStatus(
                name,
                *(getattr(c, k, 0) for k in ("queued", "working", "done", "held")),
                **_enrolled(config, user, store.bank.extractor, unreadable),
                references_folder=user.references is not None,
                target=_target(store, name, unreadable),
                sybil=_sybil(config, user, unreadable),
                last_error=(c.last_error if c else "") or "",
                unreadable=unreadable,
            )
        )
    return Status(str(config.state_dir), _service(config), _engine(config), users, paused)


def _service(config: Config) -> ServiceStatus:
    record = read_record(config.state_dir)
    if record is None:
        return ServiceStatus(False, None, None, None)
    return ServiceStatus(record.running(), record.pid, record.started_at, record.stopped_at)


def _engine(config: Config) -> EngineStatus:
    settings = config.engine
    configured = settings.kind + (f" {settings.scheduler}" if settings.kind == "dask" else "")
    published = read_published(config.state_dir)
    if published is None:
        return EngineStatus(configured, None, None, **dict.fromkeys(f.name for f in fields(EngineState)))
    return EngineStatus(configured, published.running, published.at, **asdict(published.state))


def _target(store, name: str, unreadable: dict[str, str]) -> str | None:
    try:
        target = store.get(name)
    except CloakdError as e:
        unreadable["target"] = str(e)
        return None
    return None if target is None else target.name


def _enrolled(config: Config, user: UserConfig, extractor: str, unreadable: dict[str, str]) -> dict:
    """Enrolled descriptors and the cloak extractors the record lacks (the folder's photos are counted only
    by the service: describing them is not cheap)."""
    from cloakd.core.extractor_names import CLOAK

    from .references import ReferenceStore

    try:
        spaces = ReferenceStore(config.state_dir, extractor).spaces(user.name)
    except CloakdError as e:
        unreadable["references"] = str(e)
        return {"enrolled": None, "enrolled_lacks": []}
    if spaces is None:
        return {"enrolled": 0, "enrolled_lacks": []}
    return {"enrolled": len(spaces[extractor]), "enrolled_lacks": [n for n in CLOAK if n not in spaces]}


def _sybil(config: Config, user: UserConfig, unreadable: dict[str, str]) -> SybilStatus | None:
    """Images made and candidates not looked at yet (from the record and a listing: no photo is read)."""
    from .privileges import Account
    from .sybil import SybilRecord, made_entries, unrecorded

    if user.sybil is None:
        return None
    try:
        entries = SybilRecord(config.state_dir, user.name).load()
    except CloakdError as e:
        unreadable["sybil"] = str(e)
        return SybilStatus(None, None)
    try:
        left = len(unrecorded(Account.lookup(user.account), user.sybil.candidates, entries))
    except (CloakdError, OSError) as e:
        unreadable["sybil candidates"] = str(e)
        left = None
    return SybilStatus(len(made_entries(entries)), left)
