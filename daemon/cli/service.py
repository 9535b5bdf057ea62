"""``cloakd run`` (the service), ``cloakd status`` (what it is doing) and ``cloakd check-config``."""

from __future__ import annotations

import argparse
from pathlib import Path

from cloakd.core.errors import CloakdError

from ..config import DEFAULT_CONFIG, ConfigError, folder_problems, load_config, parse_config


def register(subparsers: argparse._SubParsersAction) -> None:
    def add(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                       help="configuration file (default: %(default)s)")
        p.set_defaults(func=handler)
        return p

    add("run", "run the service in the foreground: watch the outbound folders, protect, deliver", run)
    add("status", "show per user: queued, in progress, done, held, references, target class, Sybil images, "
        "last error", status)
    add("check-config", "validate the configuration file: every problem with its line and a fix", check_config)


def run(args: argparse.Namespace) -> int:
    from ..service import Service

    return Service(args.config).run()


def check_config(args: argparse.Namespace) -> int:
    try:
        text = args.config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{args.config}: cannot read the configuration: {e}; fix: pass --config FILE"]) from None
    config, problems = parse_config(text, args.config.resolve())
    if config is not None:
        problems = folder_problems(config)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {args.config}")
        return 2
    folders = sum(len(u.outbound) for u in config.users.values())
    print(f"{args.config}: OK ({len(config.users)} users, {folders} outbound folders)")
    return 0


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
    return 0


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
