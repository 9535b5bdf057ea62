"""Housekeeping: originals are deleted when their retention has run out (and only then), the ledger forgets
old rows it no longer needs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cloakd.daemon.config import load_config
from cloakd.daemon.housekeeping import DAY, housekeeping
from cloakd.daemon.ledger import Ledger
from cloakd.daemon.privileges import Account
from cloakd.daemon.worker import Pipeline
from conftest import DATA
from pipeline_child import strip_only
from servicekit import files, write_config


def run_pipeline(tmp_path: Path, originals: dict, photos: list[str]):
    folders = {name: tmp_path / name for name in ("out", "ready", "held", "archive")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for name in photos:
        (folders["out"] / name).write_bytes((DATA / "metadata" / name).read_bytes())
    config = load_config(
        write_config(
            tmp_path / "cloakd.yaml",
            folders,
            Account.current().name,
            ledger_retention_days=30,
            user_originals=originals,
        )
    )
    accounts = {"bee": Account.current()}
    ledger = Ledger(config.state_dir)
    pipeline = Pipeline(config, accounts, ledger, strip_only, lambda u, p: None, lambda at: None)
    for name in photos:
        st = os.lstat(folders["out"] / name)
        ledger.enqueue("bee", str(folders["out"] / name), st.st_size, st.st_mtime_ns)
    while (row := pipeline.claim()) is not None:
        pipeline.handle(row)
    return config, accounts, ledger, folders


def test_delete_after_days_keeps_originals_until_then(tmp_path: Path):
    config, accounts, ledger, folders = run_pipeline(
        tmp_path, {"policy": "delete", "delete_after_days": 2}, ["BlueSquare.jpg", "flower.webp"]
    )
    assert files(folders["ready"]) == ["BlueSquare.jpg", "flower.webp"]
    assert files(folders["out"]) == ["BlueSquare.jpg", "flower.webp"]  # kept for now
    os.utime(folders["out"] / "flower.webp", (1, 1))  # the user touched it since: not the processed file
    housekeeping(config, accounts, ledger, now=time.time() + 1 * DAY)
    assert files(folders["out"]) == ["BlueSquare.jpg", "flower.webp"]
    housekeeping(config, accounts, ledger, now=time.time() + 3 * DAY)
    assert files(folders["out"]) == ["flower.webp"]
    assert [r.original for r in ledger.rows()] == ["", ""]
    housekeeping(config, accounts, ledger, now=time.time() + 40 * DAY)  # past the ledger's retention
    assert ledger.rows() == []


def test_archived_originals_expire_and_kept_ones_stay_known(tmp_path: Path):
    config, accounts, ledger, folders = run_pipeline(
        tmp_path / "a", {"policy": "archive", "archive": "archive", "delete_after_days": 1}, ["BlueSquare.jpg"]
    )
    assert files(folders["archive"]) == ["BlueSquare.jpg"]
    housekeeping(config, accounts, ledger, now=time.time() + 2 * DAY)
    assert files(folders["archive"]) == [] and files(folders["ready"]) == ["BlueSquare.jpg"]

    config, accounts, ledger, folders = run_pipeline(tmp_path / "k", {"policy": "keep"}, ["BlueSquare.jpg"])
    housekeeping(config, accounts, ledger, now=time.time() + 400 * DAY)
    assert files(folders["out"]) == ["BlueSquare.jpg"]
    assert len(ledger.rows()) == 1  # a rescan still finds the original: the ledger must recognise it
