"""The service's pipeline (daemon/worker.py) run to completion without the face models, for the
crash-consistency test, which kills this process at random moments and starts it again.

Photos are only stripped of metadata (core/photo), which is what the service does with a photo that has
no faces; everything else (ledger, privileges, delivery, originals, held/) is the service's own code.
Usage: python pipeline_child.py CONFIG
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cloakd.core.photo.strip import strip_bytes
from cloakd.daemon.config import load_config
from cloakd.daemon.ledger import Ledger
from cloakd.daemon.process import ProcessResult
from cloakd.daemon.service import accounts_for
from cloakd.daemon.watch import walk
from cloakd.daemon.worker import Pipeline


def strip_only(user, account, original) -> ProcessResult:
    clean = strip_bytes(original.data, label=str(original.path))
    return ProcessResult(clean.data, clean.extension)


def main(config_path: str) -> None:
    config = load_config(Path(config_path))
    accounts = accounts_for(config)
    ledger = Ledger(config.state_dir)
    pipeline = Pipeline(config, accounts, ledger, strip_only, notice=lambda user, path: None, on_retry=lambda at: None)
    pipeline.reconcile()
    for name, user in config.users.items():
        for folder in user.outbound:
            for path in walk(accounts[name], folder):
                st = os.lstat(path)
                ledger.enqueue(name, path, st.st_size, st.st_mtime_ns)
    while (row := pipeline.claim()) is not None:
        pipeline.handle(row)


if __name__ == "__main__":
    main(sys.argv[1])
