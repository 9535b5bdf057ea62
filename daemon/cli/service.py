"""``cloakd run`` (the service), ``cloakd status`` (what it is doing) and ``cloakd check-config``."""

from __future__ import annotations

import argparse

from cloakd.core.errors import CloakdError

from ..config import folder_problems, load_config, parse_config, read_config_text
from .exits import Exit
from .options import add_command, add_config_option
from .words import count


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = [
        ("run", run, "run the service in the foreground",
         "Run the service in the foreground: watch every user's outbound folders, protect each photo that "
         "arrives and deliver it to the user's ready folder. systemd runs this (systemd/cloakd.service); "
         "stop it with Ctrl-C.",
         "sudo cloakd run --config /etc/cloakd/cloakd.yaml"),
        ("status", status, "show what the service is doing, per user",
         "Show per user: photos queued, in progress, done and held, enrolled reference photos, the target "
         "class, Sybil images made and candidates left, and the last error.",
         "sudo cloakd status"),
        ("check-config", check_config, "check the configuration file",
         "Check the configuration file and list every problem with its line and how to fix it (unknown keys, "
         "wrong values, missing or shared folders...).",
         "cloakd check-config --config /etc/cloakd/cloakd.yaml"),
    ]
    for name, handler, summary, description, example in commands:
        p = add_command(subparsers, name, summary=summary, description=description, example=example)
        add_config_option(p)
        p.set_defaults(func=handler)


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
    from ..ledger import FILE_NAME, Ledger
    from ..targets import TargetStore

    config = load_config(args.config, check_folders=False)
    if not (config.state_dir / FILE_NAME).exists():
        raise CloakdError(f"no ledger in {config.state_dir}: the service has not run with this configuration yet")
    try:
        ledger = Ledger(config.state_dir, readonly=True)
        counts = ledger.counts()
    except Exception as e:  # sqlite3 errors: usually no permission on the state directory
        raise CloakdError(f"cannot read the ledger in {config.state_dir}: {e} (run as the service's user)") from None
    print(_engine(config))
    store = TargetStore(config.state_dir)
    header = ("user", "queued", "in progress", "done", "held", "references", "target class", "sybil made/left",
              "last error")
    rows = []
    for name, user in config.users.items():
        c = counts.get(name)
        try:
            target = store.get(name)
        except CloakdError as e:
            target_name = f"(unreadable: {e})"
        else:
            target_name = target.name if target is not None else "(not chosen yet)"
        rows.append((name, *(str(getattr(c, k, 0)) for k in ("queued", "working", "done", "held")),
                     _references(config, user, store.bank.extractor), target_name, _sybil(config, user),
                     (c.last_error if c else "") or "-"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    return Exit.OK


def _engine(config) -> str:
    """Which engine the service uses and its state (a Dask cluster reachable, or waiting, or local fallback)."""
    from ..engine.status import engine_line

    return engine_line(config)


def _references(config, user, extractor: str) -> str:
    """Enrolled descriptors (the folder's photos are counted only by the service: describing them is not cheap)."""
    from ..references import ReferenceStore

    try:
        enrolled = ReferenceStore(config.state_dir, extractor).get(user.name)
    except CloakdError:
        return "(unreadable)"
    text = f"{0 if enrolled is None else len(enrolled)} enrolled"
    return text + " + folder" if user.references is not None else text


def _sybil(config, user) -> str:
    """Images made and candidates not looked at yet (from the record and a listing: no photo is read)."""
    from ..privileges import Account
    from ..sybil import SybilRecord, made, unrecorded

    if user.sybil is None:
        return "-"
    try:
        entries = SybilRecord(config.state_dir, user.name).load()
    except CloakdError:
        return "(unreadable record)"
    try:
        left = str(len(unrecorded(Account.lookup(user.account), user.sybil.candidates, entries)))
    except (CloakdError, OSError):
        left = "?"
    return f"{len(made(entries))}/{left}"
