"""Periodic clean-up: originals whose retention has run out, and ledger rows nobody needs any more."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import deliver
from .config import Config
from .ledger import Ledger
from .privileges import Account
from .words import count

log = logging.getLogger("cloakd.housekeeping")
DAY = 86400.0


def housekeeping(config: Config, accounts: dict[str, Account], ledger: Ledger, now: float | None = None) -> None:
    """Delete originals ``delete_after_days`` after delivery (in place or archived, per policy), and prune
    ledger rows older than ``ledger_retention_days`` unless their file still lies in an outbound folder."""
    now = time.time() if now is None else now
    for user in config.users.values():
        account = accounts[user.name]
        days = user.originals.delete_after_days
        if days and user.originals.policy in ("archive", "delete"):
            deleted = 0
            for row in ledger.to_delete(user.name, now - days * DAY):
                # only the very file that was processed (same size and mtime); a changed file is left alone
                deleted += deliver.remove(account, Path(row.original), row.size, row.mtime_ns)
                ledger.forget_original(row.id)
            if deleted:
                log.info("%s: deleted %s older than %s", user.name, count(deleted, "original"), count(days, "day"))
        pruned = ledger.prune(user.name, now - config.ledger_retention_days * DAY, [str(f.path) for f in user.outbound])
        if pruned:
            log.info(
                "%s: forgot %s older than %s",
                user.name,
                count(pruned, "ledger row"),
                count(config.ledger_retention_days, "day"),
            )
