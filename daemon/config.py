"""The service's one YAML file: read, validate, and turn into frozen dataclasses.

Every problem is reported as ``FILE:LINE: what is wrong; fix: what to do``, all of them at once, so an
administrator fixes a config in one pass. Line numbers come from the YAML node tree (``yaml.compose``),
not from the constructed Python values, which have forgotten where they came from.

Relative paths are taken relative to the folder of the config file. Folder checks (exists, not shared
between users, a ready folder not inside an outbound folder...) run in :func:`load_config` unless
``check_folders=False`` (the service re-checks them on every start and reload).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from cloakd.core.cloak.presets import DEFAULT_PRESET, PRESETS
from cloakd.core.errors import CloakdError, MetadataPolicyError, os_error_text
from cloakd.core.identity import Others
from cloakd.core.photo.keep import resolve

from .engine.address import EXAMPLE as ADDRESS_EXAMPLE, clear_text_refusal, parse_address
from .state import DEFAULT_STATE_DIR, USER_NAME_RULE, valid_user_name

DEFAULT_CONFIG = Path("/etc/cloakd/cloakd.yaml")
#: what ``install.sh --user`` writes, under $XDG_CONFIG_HOME (default ~/.config)
USER_CONFIG = "cloakd/cloakd.yaml"
LOG_LEVELS = ("debug", "info", "warning", "error")
MODES = tuple(PRESETS)
OTHERS = tuple(Others)
HEIC_AS = ("jpeg", "heif")
POLICIES = ("archive", "keep", "delete")
RATE_UNITS = {"hour": 24.0, "day": 1.0, "week": 1 / 7}
DEFAULT_SYBIL_RATE = "1/day"
ENGINE_KINDS = ("local", "dask")
FALLBACKS = ("wait", "local")
DEVICES = ("auto", "cpu", "cuda")
INSTALL_DASK = "pip install 'cloakd[dask]' (from a checkout: bash scripts/install.sh --dask)"


class ConfigError(CloakdError):
    """The configuration file is missing, malformed or inconsistent; ``problems`` lists every finding."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems: run `cloakd check-config`)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)


@dataclass(frozen=True)
class Window:
    """A daily processing window ``HH:MM-HH:MM``; one that ends before it starts runs past midnight."""

    start: int  # minutes after midnight
    end: int

    def contains(self, when: datetime) -> bool:
        minute = when.hour * 60 + when.minute
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def next_start(self, when: datetime) -> datetime:
        start = when.replace(hour=self.start // 60, minute=self.start % 60, second=0, microsecond=0)
        return start if start > when else start + timedelta(days=1)

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


@dataclass(frozen=True)
class Folder:
    """An outbound folder: ``polling`` for network file systems, where inotify sees no remote changes."""

    path: Path
    recursive: bool = True
    polling: bool = False


@dataclass(frozen=True)
class Originals:
    """What happens to an original once its protected copy is durable in the ready folder.

    archive: moved to ``archive`` (deleted from there after ``delete_after_days`` if set);
    keep: left in place; delete: deleted ``delete_after_days`` days after delivery (0: at once).
    """

    policy: str = "archive"
    archive: Path | None = None
    delete_after_days: int | None = None


@dataclass(frozen=True)
class Sybil:
    """Settings for the Sybil images of the identity issue (validated here, generated there)."""

    candidates: Path
    output: Path
    per_day: float


@dataclass(frozen=True)
class Engine:
    """Who runs each photo's protect() (daemon/engine/): ``local``, the service's own worker threads, or
    ``dask``, the workers of a Dask cluster at ``scheduler`` (TLS files for a ``tls://`` address; plain TCP
    to another machine only with ``insecure``). ``fallback``: while the scheduler or every worker is
    unreachable, photos ``wait`` or are processed ``local``ly. ``device``: where the service's own work
    runs (``auto``: CUDA if torch sees a GPU)."""

    kind: str = "local"
    scheduler: str = ""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    fallback: str = "wait"
    device: str = "auto"


@dataclass(frozen=True)
class UserConfig:
    name: str
    account: str
    outbound: tuple[Folder, ...]
    ready: Path
    held: Path
    originals: Originals
    mode: str = DEFAULT_PRESET
    references: Path | None = None
    others: Others = Others.AWAY
    keep_metadata: tuple[str, ...] = ()
    heic_as: str = "JPEG"
    sybil: Sybil | None = None

    def outbound_of(self, path: Path) -> Folder | None:
        """The outbound folder that holds ``path`` (None if none does)."""
        for folder in self.outbound:
            if path.is_relative_to(folder.path):
                return folder
        return None


@dataclass(frozen=True)
class Config:
    source: Path
    users: dict[str, UserConfig]
    state_dir: Path = DEFAULT_STATE_DIR
    log_level: str = "info"
    workers: int = 1
    torch_threads: int = 1
    stable_seconds: float = 5.0
    rescan_seconds: float = 900.0
    poll_seconds: float = 10.0
    windows: tuple[Window, ...] = ()
    retry_attempts: int = 8
    retry_delay_seconds: float = 60.0
    stop_timeout_seconds: float = 30.0
    ledger_retention_days: int = 365
    engine: Engine = Engine()
    #: line of each validated path value, for problems found after parsing (folder overlaps)
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def in_window(self, when: datetime) -> bool:
        return not self.windows or any(w.contains(when) for w in self.windows)


_REQUIRED = object()


class _Items(dict):
    """A YAML mapping's entries, key -> (key node, value node), and the mapping's own node (for "missing")."""

    def __init__(self, node: yaml.Node | None):
        super().__init__()
        self.node = node


class _Reader:
    """Walks the YAML node tree, converts values and collects problems with their line numbers."""

    def __init__(self, text: str, source: Path):
        self.source = source
        self.problems: list[str] = []
        self.lines: dict[str, int] = {}
        self._loader = yaml.SafeLoader(text)

    @staticmethod
    def name(where: str, key: str) -> str:
        """``users.alice.ready``; top-level keys are named bare."""
        return f"{where}.{key}" if where else key

    def problem(self, node: yaml.Node | None, message: str, fix: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.source}:{line}: {message}; fix: {fix}")

    def root(self) -> yaml.Node | None:
        try:
            return self._loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            self.problems.append(
                f"{self.source}:{line}: not valid YAML: {e.problem or e.context}; "
                f"fix: correct the syntax (indentation, colons, quotes)"
            )
        except yaml.YAMLError as e:
            self.problems.append(f"{self.source}:1: not valid YAML: {e}; fix: correct the syntax")
        return None

    def value(self, node: yaml.Node) -> Any:
        return self._loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node | None, where: str, known: tuple[str, ...]) -> _Items:
        """Key -> (key node, value node); unknown and duplicate keys are problems."""
        out = _Items(node)
        if node is None or not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{where or 'the file'} must be a mapping of keys to values", "write `key: value` lines")
            return out
        for key, value in node.value:
            name = str(self.value(key))
            if name in out:
                self.problem(key, f"key {self.name(where, name)!r} appears twice", "keep one of them")
            elif known and name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                self.problem(key, f"unknown key {self.name(where, name)!r}", hint)
            else:
                out[name] = (key, value)
        return out

    def get(self, items: _Items, key: str, where: str, kinds: tuple[type, ...], default: Any = _REQUIRED) -> Any:
        """A scalar or list value of one of ``kinds``; the default when absent (a problem if required)."""
        if key not in items:
            if default is _REQUIRED:
                self.problem(
                    items.node, f"{self.name(where, key)!r} is missing", f"add `{key}:` to {where or 'the file'}"
                )
                return None
            return default
        node = items[key][1]
        value = self.value(node)
        if value is None and default is not _REQUIRED:  # `key:` with nothing after it
            return default
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(
                {int: "a whole number", float: "a number", bool: "true or false", str: "a text", list: "a list"}[k]
                for k in kinds
            )
            self.problem(node, f"{self.name(where, key)} is {value!r}, it must be {names}", f"write {key} as {names}")
            return None if default is _REQUIRED else default
        return value

    def number(self, items: _Items, key: str, where: str, default: float, minimum: float, whole: bool = False) -> Any:
        kinds = (int,) if whole else (int, float)
        value = self.get(items, key, where, kinds, default)
        if value is not None and value < minimum:
            self.problem(
                items[key][1],
                f"{self.name(where, key)} is {value}, it must be at least {minimum}",
                f"set {key} to {minimum} or more",
            )
            return default
        return value

    def choice(self, items: _Items, key: str, where: str, options: tuple[str, ...], default: str) -> str:
        value = self.get(items, key, where, (str,), default)
        if value is not None and value.lower() not in options:
            self.problem(items[key][1], f"{self.name(where, key)} is {value!r}", f"use one of: {', '.join(options)}")
            return default
        return (value or default).lower()

    def path(self, items: _Items, key: str, where: str, required: bool = True) -> Path | None:
        value = self.get(items, key, where, (str,), _REQUIRED if required else None)
        if not value:
            return None
        path = Path(os.path.normpath(self.source.parent / value))
        self.lines[self.name(where, key)] = items[key][1].start_mark.line + 1
        return path


_GLOBAL_KEYS = (
    "state_dir",
    "log_level",
    "workers",
    "torch_threads",
    "stable_seconds",
    "rescan_seconds",
    "poll_seconds",
    "processing_windows",
    "retry",
    "stop_timeout_seconds",
    "ledger_retention_days",
    "engine",
    "users",
)
_USER_KEYS = (
    "account",
    "outbound",
    "ready",
    "held",
    "originals",
    "mode",
    "references",
    "others",
    "keep_metadata",
    "heic_as",
    "sybil",
)


def parse_config(text: str, source: Path) -> tuple[Config | None, list[str]]:
    """(config, problems) from the text of a config file; folders are not looked at."""
    r = _Reader(text, source)
    root = r.root()
    if r.problems:
        return None, r.problems
    if root is None:
        return None, [f"{source}:1: the file is empty; fix: start from config/cloakd.example.yaml"]
    top = r.mapping(root, "", _GLOBAL_KEYS)
    windows = tuple(_windows(r, top))
    retry = r.mapping(top["retry"][1], "retry", ("attempts", "first_delay_seconds")) if "retry" in top else _Items(root)
    users = _users(r, top, root)
    config = Config(
        source=source,
        users=users,
        state_dir=r.path(top, "state_dir", "", required=False) or Config.state_dir,
        log_level=r.choice(top, "log_level", "", LOG_LEVELS, Config.log_level),
        workers=r.number(top, "workers", "", Config.workers, 1, whole=True),
        torch_threads=r.number(top, "torch_threads", "", Config.torch_threads, 1, whole=True),
        stable_seconds=float(r.number(top, "stable_seconds", "", Config.stable_seconds, 0.1)),
        rescan_seconds=float(r.number(top, "rescan_seconds", "", Config.rescan_seconds, 1)),
        poll_seconds=float(r.number(top, "poll_seconds", "", Config.poll_seconds, 0.5)),
        windows=windows,
        retry_attempts=r.number(retry, "attempts", "retry", Config.retry_attempts, 1, whole=True),
        retry_delay_seconds=float(r.number(retry, "first_delay_seconds", "retry", Config.retry_delay_seconds, 0.1)),
        stop_timeout_seconds=float(r.number(top, "stop_timeout_seconds", "", Config.stop_timeout_seconds, 1)),
        ledger_retention_days=r.number(top, "ledger_retention_days", "", Config.ledger_retention_days, 1, whole=True),
        engine=_engine(r, top),
        lines=r.lines,
    )
    return (None if r.problems else config), _by_line(r.problems)


def _by_line(problems: list[str]) -> list[str]:
    """Problems in file order (they are found section by section)."""
    return sorted(problems, key=lambda p: int(m[1]) if (m := re.match(r".*?:(\d+): ", p)) else 0)


def _windows(r: _Reader, top: dict) -> list[Window]:
    raw = r.get(top, "processing_windows", "", (list,), [])
    out = []
    for i, text in enumerate(raw or []):
        node = top["processing_windows"][1].value[i]
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", str(text))
        if not m or int(m[1]) > 23 or int(m[3]) > 24 or int(m[2]) > 59 or int(m[4]) > 59:
            r.problem(node, f"processing window {text!r} is not HH:MM-HH:MM", 'write e.g. "01:00-06:00"')
            continue
        start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
        if start == end:
            r.problem(node, f"processing window {text!r} is empty", "remove the window list to process at any time")
            continue
        out.append(Window(start, end % (24 * 60)))
    return out


def _users(r: _Reader, top: dict, root: yaml.Node) -> dict[str, UserConfig]:
    if "users" not in top:
        r.problem(root, "no `users:` section", "add a users: section with at least one user")
        return {}
    users_node = top["users"][1]
    entries = r.mapping(users_node, "users", ())
    if not entries and isinstance(users_node, yaml.MappingNode):
        r.problem(users_node, "`users:` is empty", "add at least one user")
    out = {}
    for name, (key, node) in entries.items():
        if not valid_user_name(name):
            r.problem(
                key,
                f"user name {name!r} is not usable as a folder name in the state directory",
                f"use {USER_NAME_RULE}",
            )
            continue
        user = _user(r, name, node)
        if user is not None:
            out[name] = user
    return out


def _user(r: _Reader, name: str, node: yaml.Node) -> UserConfig | None:
    where = f"users.{name}"
    items = r.mapping(node, where, _USER_KEYS)
    if not isinstance(node, yaml.MappingNode):
        return None  # reported; anything more about it would be noise
    account = r.get(items, "account", where, (str,), name)
    try:
        pwd.getpwnam(account)
    except KeyError:
        r.problem(
            items["account"][1] if "account" in items else node,
            f"{where}: no unix account {account!r}",
            "set `account:` to an existing login name (see /etc/passwd)",
        )
    outbound = _outbound(r, items, where, node)
    ready = r.path(items, "ready", where)
    held = r.path(items, "held", where, required=False)
    if held is None and ready is not None:
        held = ready.parent / "Held"
        r.lines[f"{where}.held"] = r.lines.get(f"{where}.ready", 1)
    keep = r.get(items, "keep_metadata", where, (list,), [])
    try:
        keep = resolve(str(k) for k in keep or [])
    except MetadataPolicyError as e:
        r.problem(items["keep_metadata"][1], f"{where}.keep_metadata: {e}", "remove that tag from the list")
        keep = ()
    user = UserConfig(
        name=name,
        account=account or name,
        outbound=outbound,
        ready=ready or Path("/"),
        held=held or Path("/"),
        originals=_originals(r, items, where),
        mode=r.choice(items, "mode", where, MODES, UserConfig.mode),
        references=r.path(items, "references", where, required=False),
        others=Others(r.choice(items, "others", where, OTHERS, UserConfig.others)),
        keep_metadata=tuple(keep),
        heic_as=r.choice(items, "heic_as", where, HEIC_AS, UserConfig.heic_as.lower()).upper(),
        sybil=_sybil(r, items, where),
    )
    return user if ready is not None else None


def _outbound(r: _Reader, items: _Items, where: str, node: yaml.Node) -> tuple[Folder, ...]:
    if "outbound" not in items:
        r.problem(node, f"{where}: 'outbound' is missing", "add `outbound:` with the folder(s) to watch")
        return ()
    seq = items["outbound"][1]
    if isinstance(seq, yaml.ScalarNode):
        seq = yaml.SequenceNode("tag:yaml.org,2002:seq", [seq], seq.start_mark, seq.end_mark)
    if not isinstance(seq, yaml.SequenceNode) or not seq.value:
        r.problem(seq, f"{where}.outbound must be a list of folders", "write `- path: /folder` items")
        return ()
    out = []
    for i, item in enumerate(seq.value):
        here = f"{where}.outbound[{i}]"
        if isinstance(item, yaml.ScalarNode):  # a bare path
            item = yaml.MappingNode(
                "tag:yaml.org,2002:map",
                [(yaml.ScalarNode("tag:yaml.org,2002:str", "path", item.start_mark, item.end_mark), item)],
                item.start_mark,
                item.end_mark,
            )
        fields = r.mapping(item, here, ("path", "recursive", "polling"))
        path = r.path(fields, "path", here)
        if path is not None:
            out.append(
                Folder(
                    path,
                    bool(r.get(fields, "recursive", here, (bool,), True)),
                    bool(r.get(fields, "polling", here, (bool,), False)),
                )
            )
    return tuple(out)


def _originals(r: _Reader, items: _Items, where: str) -> Originals:
    if "originals" not in items:
        r.problem(
            items.node,
            f"{where}: 'originals' is missing (what happens to a photo once its protected copy is delivered)",
            "add `originals: {policy: archive, archive: /folder}` (or policy keep / delete)",
        )
        return Originals()
    here = f"{where}.originals"
    fields = r.mapping(items["originals"][1], here, ("policy", "archive", "delete_after_days"))
    policy = r.choice(fields, "policy", here, POLICIES, Originals.policy)
    archive = r.path(fields, "archive", here, required=False)
    days = r.get(fields, "delete_after_days", here, (int,), None)
    if days is not None and days < 0:
        r.problem(fields["delete_after_days"][1], f"{here}.delete_after_days is negative", "use 0 or more days")
    if policy == "archive" and archive is None:
        r.problem(
            items["originals"][1],
            f"{here}: policy archive needs an `archive:` folder",
            "add `archive: /folder/for/originals`, or use policy keep or delete",
        )
    if policy != "archive" and archive is not None:
        r.problem(
            fields["archive"][1],
            f"{here}: `archive:` is only used with policy archive",
            "remove it or set policy: archive",
        )
    if policy == "keep" and days is not None:
        r.problem(
            fields["delete_after_days"][1],
            f"{here}: policy keep never deletes",
            "remove delete_after_days or use policy delete",
        )
    if policy == "delete" and days is None:
        days = 0
    return Originals(policy, archive, days)


def _sybil(r: _Reader, items: _Items, where: str) -> Sybil | None:
    if "sybil" not in items:
        return None
    here = f"{where}.sybil"
    fields = r.mapping(items["sybil"][1], here, ("candidates", "output", "rate"))
    candidates, output = r.path(fields, "candidates", here), r.path(fields, "output", here)
    rate = r.get(fields, "rate", here, (str,), DEFAULT_SYBIL_RATE)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(hour|day|week)\s*", rate or "")
    if not m or float(m[1]) <= 0:
        r.problem(
            fields["rate"][1] if "rate" in fields else items["sybil"][1],
            f"{here}.rate {rate!r} is not N/unit",
            'write e.g. "2/day" (units: hour, day, week)',
        )
        return None
    if candidates is None or output is None:
        return None
    return Sybil(candidates, output, float(m[1]) * RATE_UNITS[m[2]])


def _engine(r: _Reader, top: _Items) -> Engine:
    if "engine" not in top:
        return Engine()
    node = top["engine"][1]
    items = r.mapping(node, "engine", ("kind", "scheduler", "tls", "insecure", "fallback", "device"))
    kind = r.choice(items, "kind", "engine", ENGINE_KINDS, Engine.kind)
    if "kind" in items:
        r.lines["engine.kind"] = items["kind"][1].start_mark.line + 1
    insecure = bool(r.get(items, "insecure", "engine", (bool,), False))
    settings = {
        "kind": kind,
        "insecure": insecure,
        "device": r.choice(items, "device", "engine", DEVICES, Engine.device),
        "fallback": r.choice(items, "fallback", "engine", FALLBACKS, Engine.fallback),
    }
    if kind == "local":
        for key in ("scheduler", "tls", "fallback", "insecure"):
            if key in items:
                r.problem(items[key][0], f"engine.{key} is only used with kind: dask", "remove it or set kind: dask")
        return Engine(**settings)
    scheduler = r.get(items, "scheduler", "engine", (str,))
    tls = _engine_tls(r, items)
    if scheduler is None:
        return Engine(**settings)
    try:
        address = parse_address(scheduler)
    except ValueError as e:
        r.problem(items["scheduler"][1], f"engine.scheduler: {e}", f"write e.g. scheduler: {ADDRESS_EXAMPLE}")
        return Engine(**settings)
    refusal = clear_text_refusal(address, insecure)
    if refusal:
        r.problem(
            items["scheduler"][1],
            f"engine.scheduler: {refusal}",
            'use tls:// with engine.tls (README, "Several machines"), or set insecure: true if this network '
            "is yours alone",
        )
    if address.protocol == "tls" and tls is None:
        r.problem(
            items["scheduler"][1],
            "engine.scheduler is tls:// but engine.tls is missing",
            "add tls: {ca: CA.pem, cert: SERVICE.pem, key: SERVICE.key}",
        )
    if address.protocol == "tcp" and tls is not None:
        r.problem(items["tls"][0], "engine.tls is only used with a tls:// scheduler", "write the scheduler as tls://")
    return Engine(**settings, scheduler=str(address), **(tls or {}))


def _engine_tls(r: _Reader, items: _Items) -> dict | None:
    if "tls" not in items:
        return None
    fields = r.mapping(items["tls"][1], "engine.tls", ("ca", "cert", "key"))
    files = {f"tls_{key}": r.path(fields, key, "engine.tls") for key in ("ca", "cert", "key")}
    return files if all(files.values()) else None


def _engine_problems(config: Config) -> list[str]:
    """What the engine needs on this machine (checked with the folders: both are looked at on start): Dask's
    package for kind dask, and readable TLS files."""
    problems = []
    if config.engine.kind == "dask" and importlib.util.find_spec("distributed") is None:
        problems.append(
            f"{config.source}:{config.lines.get('engine.kind', 1)}: engine kind dask: Dask's `distributed` "
            f"package is not installed; fix: {INSTALL_DASK}"
        )
    for key in ("ca", "cert", "key"):
        path = getattr(config.engine, f"tls_{key}")
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            problems.append(
                f"{config.source}:{config.lines.get(f'engine.tls.{key}', 1)}: engine.tls.{key}: {path} "
                f'is not a readable file; fix: correct the path (README, "Several machines", makes them)'
            )
    return problems


def _folders(user: UserConfig) -> list[tuple[str, str, Path, bool]]:
    """A user's folders: (role, line key, path, whether it must exist already)."""
    w = f"users.{user.name}"
    roles = [("outbound folder", f"{w}.outbound[{i}].path", f.path, True) for i, f in enumerate(user.outbound)]
    roles += [("ready folder", f"{w}.ready", user.ready, True), ("held folder", f"{w}.held", user.held, False)]
    if user.originals.archive is not None:
        roles.append(("archive folder", f"{w}.originals.archive", user.originals.archive, True))
    if user.references is not None:
        roles.append(("references folder", f"{w}.references", user.references, True))
    if user.sybil is not None:
        roles += [
            ("sybil candidates folder", f"{w}.sybil.candidates", user.sybil.candidates, True),
            ("sybil output folder", f"{w}.sybil.output", user.sybil.output, True),
        ]
    return roles


def folder_problems(config: Config) -> list[str]:
    """Missing folders and folders that overlap where they must not (within a user or across users)."""
    problems: list[str] = []

    def say(key: str, message: str, fix: str) -> None:
        problems.append(f"{config.source}:{config.lines.get(key, 1)}: {message}; fix: {fix}")

    owned: list[tuple[str, str, str, Path]] = []  # user, role, line key, resolved path
    for user in config.users.values():
        for role, key, path, must_exist in _folders(user):
            if must_exist and not path.is_dir():
                say(
                    key,
                    f"user {user.name}: the {role} {path} does not exist",
                    f"create it (mkdir -p {path}; chown {user.account} {path}) or correct the path",
                )
            elif not must_exist and not path.parent.is_dir():
                say(
                    key,
                    f"user {user.name}: the {role} {path} cannot be created: {path.parent} does not exist",
                    "create its parent folder or set `held:` to another folder",
                )
            owned.append((user.name, role, key, path.resolve()))
    _overlaps(owned, say)
    return problems + _engine_problems(config)


def _overlaps(owned: list[tuple[str, str, str, Path]], say: Callable[[str, str, str], None]) -> None:
    """Say every pair of ``owned`` folders (user, role, line key, resolved path) that nest where they must not."""
    for i, (u1, role1, key1, p1) in enumerate(owned):
        for u2, role2, key2, p2 in owned[i + 1 :]:
            if not (p1 == p2 or p1.is_relative_to(p2) or p2.is_relative_to(p1)):
                continue
            if u1 != u2:
                say(
                    key2,
                    f"user {u2}'s {role2} {p2} and user {u1}'s {role1} {p1} overlap (shared folders)",
                    "give every user folders of their own",
                )
            elif _conflict(role1, role2):
                (inner, pi), (outer, po) = (
                    ((role2, p2), (role1, p1)) if p2.is_relative_to(p1) else ((role1, p1), (role2, p2))
                )
                say(
                    key2,
                    f"user {u1}: the {inner} {pi} is inside (or is) the {outer} {po}",
                    "use separate folders: a ready, held or archive folder inside an outbound folder would be "
                    "processed again, and held or archived originals inside a ready folder would be published",
                )


def _conflict(role1: str, role2: str) -> bool:
    """Within one user, only references with Sybil candidates, and ready with Sybil output, may nest."""
    pair = {role1, role2}
    return not (
        pair <= {"references folder", "sybil candidates folder"} or pair <= {"ready folder", "sybil output folder"}
    )


def user_config() -> Path:
    """The per-user service's configuration (``install.sh --user``): $XDG_CONFIG_HOME/cloakd/cloakd.yaml."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / USER_CONFIG


def default_config() -> Path:
    """The configuration a command reads without ``--config``: for a user other than root who has a per-user
    service (``install.sh --user``), that one; otherwise the system's, /etc/cloakd/cloakd.yaml."""
    if os.geteuid() != 0:
        mine = user_config()
        if mine.is_file():
            return mine
    return DEFAULT_CONFIG


def read_config_text(path: Path) -> str:
    """The configuration file's text; ConfigError saying how to fix a missing or unreadable file."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            [
                f"cannot read the configuration {os_error_text(e, path)}; fix: create it (start from "
                f"config/cloakd.example.yaml; `sudo bash scripts/install.sh --system` installs it as "
                f"{DEFAULT_CONFIG}) or pass --config FILE"
            ]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}:1: not UTF-8 text; fix: save the file as UTF-8"]) from None


def load_config(path: Path, check_folders: bool = True) -> Config:
    """The validated configuration in ``path``; ConfigError lists every problem found."""
    config, problems = parse_config(read_config_text(path), path.resolve())
    if config is not None and check_folders:
        problems = _by_line(folder_problems(config))
    if problems:
        raise ConfigError(problems)
    return config
