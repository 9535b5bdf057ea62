"""``cloakd run`` (the service), ``cloakd status`` (what it is doing) and ``cloakd check-config``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..config import folder_problems, load_config, parse_config, read_config_text
from ..words import count
from .exits import Exit
from .options import add_command, add_config_option

if TYPE_CHECKING:
    from ..status import EngineStatus, ServiceStatus, UserStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = [
        (
            "run",
            run,
            "run the service in the foreground",
            "Run the service in the foreground: watch every user's outbound folders, protect each photo that "
            "arrives and deliver it to the user's ready folder. systemd runs this (systemd/cloakd.service); "
            "stop it with Ctrl-C.",
            "sudo cloakd run --config /etc/cloakd/cloakd.yaml",
        ),
        (
            "status",
            status,
            "show what the service is doing, per user",
            "Show whether the service is running (its pid and since when, from the record it keeps in its state "
            "directory), the engine (local, or a Dask cluster and whether it is reachable), a line per folder "
            "found full (paused: whose photos wait until space is freed), then per user: photos "
            "queued, in progress, done and held, enrolled reference photos, the target class, Sybil images made "
            "and candidates left, and the last error. With --json, one JSON object: state_dir; service, with "
            "running (true or false), pid (the running service's, else the last one's; null if no service has "
            "started with this state directory), started_at and stopped_at (null while it runs or if it did not "
            "stop cleanly); engine, with "
            'configured ("local" or "dask ADDRESS"), service_running (null if no service published a state), '
            "published_at, and the state it published (null if none): kind, state (working locally, connected, "
            "waiting for the scheduler, waiting for a cloakd worker, or working locally (fallback: local)), "
            "detail, since, scheduler and fallback; and users, each with name, queued, in_progress, done, held, "
            "enrolled (reference photos), enrolled_lacks (the cloak's extractors the enrolment has no "
            "descriptors by: it was made before they existed; enrol again to add them), "
            "references_folder (true if a references folder adds photos), target (the target class, null if not "
            'chosen yet), sybil (null without Sybil images, else made and left), last_error ("" if none) and '
            "unreadable (what could not be read, with why; its fields are then null); and paused, one object per "
            "place found full: what, path, user (whose photos wait; null: everyone's, the state directory), "
            "free_bytes, since (null when cloakd status found the state directory full itself), error and by "
            '("service" or "status").',
            "sudo cloakd status --json",
        ),
        (
            "check-config",
            check_config,
            "check the configuration file",
            "Check the configuration file and list every problem with its line and how to fix it (unknown keys, "
            "wrong values, missing or shared folders...).",
            "cloakd check-config --config /etc/cloakd/cloakd.yaml",
        ),
    ]
    parsers = {}
    for name, handler, summary, description, example in commands:
        parsers[name] = p = add_command(subparsers, name, summary=summary, description=description, example=example)
        add_config_option(p)
        p.set_defaults(func=handler)
    parsers["status"].add_argument(
        "--json", action="store_true", help="print the status as one JSON object (its fields above)"
    )


def run(args: argparse.Namespace) -> int:
    from ..service import Service

    return Service(args.config).run()


def check_config(args: argparse.Namespace) -> int:
    config, problems = parse_config(read_config_text(args.config), args.config.resolve())
    if config is not None:
        problems = folder_problems(config)
    for line in problems:
        print(line)
    if problems:
        print(f"{count(len(problems), 'problem')} in {args.config}")
        return Exit.FAILED
    folders = sum(len(u.outbound) for u in config.users.values())
    print(f"{args.config}: OK ({count(len(config.users), 'user')}, {count(folders, 'outbound folder')})")
    return Exit.OK


def status(args: argparse.Namespace) -> int:
    from ..status import snapshot

    snap = snapshot(load_config(args.config, check_folders=False))
    if args.json:
        print(json.dumps(snap.as_dict(), indent=1))
        return Exit.OK
    print(_service(snap.service))
    print(_engine(snap.engine))
    for pause in snap.paused:
        print(f"paused: {pause.text()}")
    header = (
        "user",
        "queued",
        "in progress",
        "done",
        "held",
        "references",
        "target class",
        "sybil made/left",
        "last error",
    )
    rows = [
        (
            u.name,
            *map(str, (u.queued, u.in_progress, u.done, u.held)),
            _references(u),
            _target(u),
            _sybil(u),
            u.last_error or "-",
        )
        for u in snap.users
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    return Exit.OK


def _service(s: "ServiceStatus") -> str:
    """Whether the service runs: pid and since when, or when it stopped."""
    from ..engine.status import local_time

    def when(stamp: str) -> str:
        return local_time(stamp, "%Y-%m-%d %H:%M:%S")

    if s.running:
        return f"service: running (pid {s.pid}, since {when(s.started_at)})"
    if s.started_at is None:
        return "service: not running (no service has started with this state directory)"
    if s.stopped_at is not None:
        return f"service: not running (stopped {when(s.stopped_at)}; it ran as pid {s.pid} from {when(s.started_at)})"
    return (
        f"service: not running (the one started {when(s.started_at)} as pid {s.pid} ended without stopping "
        f"cleanly: see its log)"
    )


def _engine(e: "EngineStatus") -> str:
    """Which engine the service uses and its state (a Dask cluster reachable, or waiting, or local fallback)."""
    from ..engine.status import local_time

    state = e.published()
    if state is None:
        return f"engine: {e.configured} (the service has not published its state)"
    if not e.service_running:
        at = local_time(e.published_at, "%Y-%m-%d %H:%M:%S")
        return f"engine: {e.configured} (the service is not running; last state, {at}: {state.text()})"
    return f"engine: {state.text()}"


def _references(u: "UserStatus") -> str:
    if u.enrolled is None:
        return "(unreadable)"
    lacks = ""
    if u.enrolled_lacks:
        lacks = f" (lacks {', '.join(u.enrolled_lacks)}: Sybil images push away there; enrol again to add)"
    return f"{u.enrolled} enrolled" + (" + folder" if u.references_folder else "") + lacks


def _target(u: "UserStatus") -> str:
    if "target" in u.unreadable:
        return f"(unreadable: {u.unreadable['target']})"
    return u.target if u.target is not None else "(not chosen yet)"


def _sybil(u: "UserStatus") -> str:
    if u.sybil is None:
        return "-"
    if u.sybil.made is None:
        return "(unreadable record)"
    return f"{u.sybil.made}/{'?' if u.sybil.left is None else u.sybil.left}"
