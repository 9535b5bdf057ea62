"""The ledger and the pipeline's order of durable steps: nothing lost, nothing done twice, even under kill -9."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloakd.core.errors import CloakdError, ProtectionError
from cloakd.core.photo.decode import decode
from cloakd.daemon import deliver
from cloakd.daemon.config import load_config
from cloakd.daemon.ledger import DONE, GONE, HELD, QUEUED, WORKING, Ledger, LedgerDamaged, LedgerFull
from cloakd.daemon.privileges import Account, read_photo
from cloakd.daemon.service import accounts_for
from cloakd.daemon.space import PROBE_SECONDS, TRY_AGAIN_SECONDS, Space, paused_now
from cloakd.daemon.worker import REASON_SUFFIX, Pipeline
from conftest import DATA, REPO
from pipeline_child import strip_only
from servicekit import (
    bad_files,
    copy_as,
    files,
    fill_up,
    second_account,
    shared_tmp,
    small_disk,
    tiny_photos,
    two_users,
    user_tree,
    write_config,
)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / "state")
    yield led
    led.close()


def test_rows_are_idempotent_and_claimed_once(ledger: Ledger):
    first = ledger.enqueue("alice", "/o/a.jpg", 10, 111)
    assert first is not None and ledger.enqueue("alice", "/o/a.jpg", 10, 111) is None
    assert ledger.known("alice", "/o/a.jpg", 10, 111) and not ledger.known("alice", "/o/a.jpg", 10, 222)
    assert ledger.enqueue("alice", "/o/a.jpg", 12, 222) is not None  # edited in place: a new occurrence
    assert ledger.claim(["bob"]) is None
    row = ledger.claim(["alice"])
    assert (row.id, row.state, row.attempts) == (first, WORKING, 1)
    second = ledger.claim(["alice"])
    assert second.id != first and ledger.claim(["alice"]) is None


def test_a_file_that_comes_back_after_its_original_moved_on_is_new(ledger: Ledger):
    """A held photo moved back (rename keeps size and mtime) is tried again; one left in place is not."""
    for name, where in (
        ("held.jpg", "/h/held.jpg"),
        ("in-place.jpg", "/o/in-place.jpg"),
        ("kept.jpg", "/o/kept.jpg"),
        ("archived.jpg", "/arch/archived.jpg"),
    ):
        ledger.enqueue("alice", f"/o/{name}", 10, 1)
        row = ledger.claim(["alice"])
        ledger.finish(row.id, HELD if "held" in name or "place" in name else DONE, original=where)
    assert ledger.enqueue("alice", "/o/held.jpg", 10, 1) is not None
    assert ledger.enqueue("alice", "/o/archived.jpg", 10, 1) is not None  # content dedup stops a second cloak
    assert (
        ledger.enqueue("alice", "/o/in-place.jpg", 10, 1) is None
        and ledger.enqueue("alice", "/o/kept.jpg", 10, 1) is None
    )


def test_retry_waits_for_its_time_and_counts_attempts(ledger: Ledger):
    ledger.enqueue("alice", "/o/a.jpg", 10, 1)
    row = ledger.claim(["alice"])
    ledger.retry(row.id, "the disk is full", at=time.time() + 100)
    assert ledger.claim(["alice"]) is None
    assert ledger.next_due() == pytest.approx(time.time() + 100, abs=5)
    assert ledger.counts()["alice"].last_error.endswith("the disk is full")
    again = ledger.claim(["alice"], now=time.time() + 101)
    assert again.id == row.id and again.attempts == 2
    ledger.forgive(again.id)  # stopped while in hand: does not count
    assert ledger.get(row.id).attempts == 1


def test_same_content_is_recognised(ledger: Ledger):
    for name in ("a", "b", "c"):
        ledger.enqueue("alice", f"/o/{name}.jpg", 10, 1)
    ledger.enqueue("bob", "/p/a.jpg", 10, 1)
    a, b = ledger.claim(["alice"]), ledger.claim(["alice"])
    assert ledger.record_hash(a.id, "f00") is None
    assert ledger.record_hash(b.id, "f00").id == a.id  # a is still in hand: b must wait
    ledger.plan_output(a.id, "/r/a.jpg", "0ff")
    ledger.delivered(a.id)
    ledger.finish(a.id, DONE, original="/arch/a.jpg")
    assert ledger.record_hash(b.id, "f00").output == "/r/a.jpg"
    bob = ledger.claim(["bob"])
    assert ledger.record_hash(bob.id, "f00") is None  # another user's photo is never a duplicate


def test_pruning_keeps_what_a_rescan_would_find(ledger: Ledger):
    for name in ("archived", "kept", "deleted", "held"):
        ledger.enqueue("alice", f"/o/{name}.jpg", 1, 1)
        row = ledger.claim(["alice"])
        if name == "held":
            ledger.plan_held(row.id, "/h/held.jpg", "not an image")
            ledger.finish(row.id, HELD, "not an image", original="/h/held.jpg")
        else:
            ledger.finish(row.id, DONE, original={"archived": "/arch/a.jpg", "kept": row.path, "deleted": ""}[name])
    assert ledger.prune("alice", time.time() - 10, ["/o"]) == 0  # too recent
    assert ledger.prune("alice", time.time() + 10, ["/o"]) == 3
    assert [r.path for r in ledger.rows()] == ["/o/kept.jpg"]


# --- a large backlog: 10 users x 1,000 photos ------------------------------------------------------------------

USERS = [f"user{u}" for u in range(10)]

#: a plan step that reads one user's rows by index, or one row: all a statement about one photo may read
_NARROW = re.compile(
    r"SEARCH photos USING (COVERING )?INDEX \w+ \(user=\?|SEARCH photos USING INTEGER PRIMARY KEY"
    r"|SCALAR SUBQUERY|USE TEMP B-TREE FOR ORDER BY"
)


def _backlog(ledger: Ledger, per_user: int = 1000) -> None:
    """``per_user`` queued photos for each of USERS, queued user after user (as a start-up scan finds them)."""
    ids = ledger.enqueue_many([(u, f"/o/{u}/{i:04d}.jpg", 10, i) for u in USERS for i in range(per_user)])
    assert None not in ids


def _statements(ledger: Ledger, call: Callable[[], object]) -> list[str]:
    """The SQL statements ``call`` makes the ledger run, values inlined (SQLite's trace hook only watches)."""
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    try:
        call()
    finally:
        ledger._db.set_trace_callback(None)
    return statements


def _plans(ledger: Ledger, call: Callable[[], object]) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of every statement ``call`` makes the ledger run."""
    plain = ledger._db.cursor()
    plain.row_factory = None
    return {
        sql: [step[3] for step in plain.execute("EXPLAIN QUERY PLAN " + sql)]
        for sql in _statements(ledger, call)
        if sql.split()[0] not in ("BEGIN", "COMMIT", "ROLLBACK")
    }


def test_a_full_folder_is_queued_in_one_transaction(ledger: Ledger):
    """A start-up scan of 1,000 files: one transaction (one sync to disk), not one per file; idempotent."""
    files = [("alice", f"/o/{i:04d}.jpg", 10, i) for i in range(1000)]
    ids = []
    statements = _statements(ledger, lambda: ids.extend(ledger.enqueue_many([*files, files[0]])))
    assert statements.count("COMMIT") == 1
    assert len(set(ids[:-1])) == 1000 and None not in ids[:-1] and ids[-1] is None  # twice in one batch: once
    assert ledger.enqueue_many(files) == [None] * 1000
    assert ledger.counts()["alice"].queued == 1000


def test_a_photo_s_statements_stay_indexed_in_a_large_backlog(ledger: Ledger):
    """With 10,000 photos queued, recognising, queueing, claiming and recording one photo read one user's rows
    by index (or one row), never every queued row nor the table: a photo costs the same in a long backlog."""
    _backlog(ledger)
    claimed = []
    steps = {
        "known": lambda: ledger.known("user4", "/o/user4/0005.jpg", 10, 5),
        "enqueue": lambda: ledger.enqueue("user3", "/o/user3/new.jpg", 1, 1),
        "claim": lambda: claimed.append(ledger.claim(USERS)),
        "record_hash": lambda: ledger.record_hash(claimed[0].id, "f00"),
        "finish": lambda: ledger.finish(claimed[0].id, DONE, original="/arch/a.jpg"),
    }
    for name, call in steps.items():
        plans = _plans(ledger, call)
        assert plans, name
        for sql, plan in plans.items():
            assert all(_NARROW.match(step) for step in plan), f"{name}: {sql}\n{plan}"


def test_status_and_housekeeping_read_what_they_report(ledger: Ledger):
    """With 10,000 photos queued: the per-state tally reads an index (not the table, no sort), the last-error
    column only the rows that carry an error, housekeeping one user's rows of one state."""
    _backlog(ledger)
    row = ledger.claim(USERS)
    ledger.finish(row.id, HELD, "not an image")
    plans = {
        **_plans(ledger, ledger.counts),
        **_plans(ledger, lambda: ledger.to_delete("user0", time.time())),
        **_plans(ledger, lambda: ledger.prune("user0", time.time() - 10, ["/o"])),
    }
    for sql, plan in plans.items():
        if sql.startswith("SELECT user, state, COUNT(*)"):
            assert len(plan) == 1 and "COVERING INDEX" in plan[0], plan
        elif sql.startswith("SELECT user, error"):
            assert plan == ["SCAN photos USING INDEX photos_errors"], plan  # a partial index: rows with an error
        else:
            assert len(plan) == 1 and "(user=? AND state=?)" in plan[0], f"{sql}\n{plan}"
    counts = ledger.counts()
    assert (counts["user0"].held, counts["user0"].queued, counts["user1"].queued) == (1, 999, 1000)
    assert counts["user0"].last_error.endswith("not an image") and counts["user1"].last_error == ""


def test_claims_take_turns_across_ten_users_with_a_thousand_photos_each(ledger: Ledger):
    """One worker, 10 users x 1,000 photos queued user after user: the first 100 claims are 10 per user in
    rotation (no user waits for another's whole backlog), and a user who arrives later is next."""
    _backlog(ledger)
    now = time.time()
    order = []
    for k in range(100):
        row = ledger.claim(USERS, now=now + k)
        order.append(row.user)
        ledger.finish(row.id, DONE)
    assert order == USERS * 10
    ledger.enqueue("late", "/o/late/1.jpg", 10, 1)
    assert [ledger.claim([*USERS, "late"], now=now + 100 + k).user for k in range(3)] == ["late", "user0", "user1"]


@pytest.fixture(scope="module")
def account():
    return second_account()


def test_a_crash_between_rename_and_ledger_is_not_delivered_twice(account):
    """The narrowest window: the output was renamed into place, the ledger never heard of it."""
    with shared_tmp("cloakd-ledger-") as base:
        folders = user_tree(base, account)
        config = load_config(write_config(base / "cloakd.yaml", folders, account.pw_name))
        me = Account.lookup(account.pw_name)
        photo = copy_as(DATA / "metadata" / "BlueSquare.jpg", folders["out"] / "blue.jpg", account)
        ledger = Ledger(config.state_dir)
        st = photo.stat()
        ledger.enqueue("bee", str(photo), st.st_size, st.st_mtime_ns)
        row = ledger.claim(["bee"])
        result = strip_only(None, me, read_photo(me, photo, [folders["out"]]))
        output = folders["ready"] / "blue.jpg"
        ledger.plan_output(row.id, str(output), hashlib.sha256(result.data).hexdigest())
        deliver.write_new(me, output, result.data, 0o644, tag=str(row.id))
        # -- crash here: restart --
        pipeline = Pipeline(config, {"bee": me}, ledger, strip_only, lambda u, p: None, lambda at: None)
        assert pipeline.reconcile() == 1
        row = ledger.get(row.id)
        assert row.state == QUEUED and row.delivered_at is not None
        pipeline.handle(pipeline.claim())
        assert files(folders["ready"]) == ["blue.jpg"] and files(folders["archive"]) == ["blue.jpg"]
        assert files(folders["out"]) == [] and ledger.get(row.id).state == DONE
        ledger.close()


def test_the_error_class_decides_hold_or_retry(account):
    """core/errors.py: a PhotoError (here a cloak that did not verify) holds the photo with its reason; any
    other CloakdError (here an unreadable state record) is not the photo's fault: it is retried later."""

    def not_verified(user, acct, original):
        raise ProtectionError("not protected: face 1: moved 0.10 (needs 0.25)")

    def unreadable_record(user, acct, original):
        raise CloakdError("/var/lib/cloakd/users/bee/target.json: unreadable target record")

    with shared_tmp("cloakd-classes-") as base:
        folders = user_tree(base, account)
        config = load_config(write_config(base / "cloakd.yaml", folders, account.pw_name))
        me = Account.lookup(account.pw_name)
        ledger = Ledger(config.state_dir)
        for name, engine in (("held.jpg", not_verified), ("retried.jpg", unreadable_record)):
            photo = copy_as(DATA / "metadata" / "BlueSquare.jpg", folders["out"] / name, account)
            st = photo.stat()
            row_id = ledger.enqueue("bee", str(photo), st.st_size, st.st_mtime_ns)
            pipeline = Pipeline(config, {"bee": me}, ledger, engine, lambda u, p: None, lambda at: None)
            pipeline.handle(ledger.claim(["bee"]))
            row = ledger.get(row_id)
            if engine is not_verified:
                assert row.state == HELD and "moved 0.10" in (folders["held"] / f"{name}{REASON_SUFFIX}").read_text()
            else:
                assert row.state == QUEUED and row.next_try > time.time() and "unreadable" in row.error
                assert name in files(folders["out"]) and files(folders["ready"]) == []
        ledger.close()


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(account):
    rng = random.Random(5)
    with shared_tmp("cloakd-crash-") as base:
        folders = user_tree(base, account)
        good = tiny_photos(folders["out"], account, 60)
        copy_as(folders["out"] / "crop000.jpg", folders["out"] / "same-as-crop000.jpg", account)
        bad = bad_files(folders["out"], account)
        config = write_config(base / "cloakd.yaml", folders, account.pw_name)
        child = [sys.executable, str(REPO / "tests" / "pipeline_child.py"), str(config)]
        env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}

        def progress() -> int:
            return sum(len(os.listdir(folders[k])) for k in ("ready", "archive", "held"))

        kills = 0
        for _ in range(100):  # kill each run a few files after it got going, until a run ends by itself
            target = progress() + rng.randint(1, 5)
            proc = subprocess.Popen(child, env=env, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while proc.poll() is None and progress() < target and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.008))  # somewhere inside the next photo's steps
            if proc.poll() is None:
                proc.kill()
                kills += 1
            if proc.wait() == 0:
                break
        final = subprocess.run(child, env=env, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr[-3000:]
        assert kills >= 10  # the test did interrupt the work many times

        outputs = files(folders["ready"])
        expected = sorted(
            n.rsplit(".", 1)[0] + {"jpg": ".jpg", "webp": ".webp", "png": ".png"}[n.rsplit(".", 1)[1]] for n in good
        )
        assert outputs == expected  # each good photo exactly once, no name-1 copies, no temporary files
        for name in outputs:
            decode((folders["ready"] / name).read_bytes(), label=name)
            assert (folders["ready"] / name).stat().st_uid == account.pw_uid
        assert files(folders["archive"]) == sorted(good + ["same-as-crop000.jpg"])
        assert files(folders["held"]) == sorted(bad + [b + REASON_SUFFIX for b in bad])
        assert files(folders["out"]) == []
        ledger = Ledger(base / "state", readonly=True)
        rows = ledger.rows()
        assert {r.state for r in rows} <= {DONE, HELD} and not any(r.state in (QUEUED, WORKING, GONE) for r in rows)
        assert sorted(Path(r.path).name for r in rows) == sorted(good + bad + ["same-as-crop000.jpg"])
        ledger.close()


# --- a full disk, a torn write, a damaged file -------------------------------------------------------------


def _enqueue_crops(ledger: Ledger, user: str, folder: Path, owner, n: int) -> list[str]:
    """``n`` tiny photos (crops only) in ``folder``, queued for ``user``."""
    names = [name for name in tiny_photos(folder, owner, n) if name.startswith("crop")]
    for name in sorted(set(os.listdir(folder)) - set(names)):
        os.unlink(folder / name)
    for name in names:
        st = (folder / name).stat()
        ledger.enqueue(user, str(folder / name), st.st_size, st.st_mtime_ns)
    return names


def _drain(pipeline: Pipeline) -> None:
    while (row := pipeline.claim()) is not None:
        pipeline.handle(row)


def test_a_full_ready_folder_pauses_only_its_user_and_costs_no_attempt(account, caplog):
    """alice's ready folder is full: her photos go back to the queue untouched (no attempt counted, no partial
    file, nothing held) and her work pauses, once, with the reason; bob's photos go on. Space freed: resumed."""
    with shared_tmp("cloakd-full-") as base:
        config = load_config(two_users(base, account))
        ready = base / "alice" / "ready"
        with small_disk(ready, "64k", account):
            filler = fill_up(ready)
            ledger = Ledger(config.state_dir)
            alice = _enqueue_crops(ledger, "alice", base / "alice" / "out", account, 3)
            bob = _enqueue_crops(ledger, "bob", base / "bob" / "out", account, 2)
            space = Space(config.state_dir)
            accounts = accounts_for(config)
            pipeline = Pipeline(config, accounts, ledger, strip_only, lambda u, p: None, lambda at: None, space)
            with caplog.at_level(logging.INFO, logger="cloakd"):
                _drain(pipeline)
            rows = {user: ledger.rows(user) for user in ("alice", "bob")}
            assert [(r.state, r.attempts) for r in rows["bob"]] == [(DONE, 1)] * 2
            assert files(base / "bob" / "ready") == sorted(bob)
            assert [(r.state, r.attempts, r.delivered_at) for r in rows["alice"]] == [(QUEUED, 0, None)] * 3
            assert files(ready) == ["filler"] and files(base / "alice" / "held") == []  # no partial, none held
            assert files(base / "alice" / "out") == sorted(alice)
            assert space.paused("alice") and not space.paused("bob") and not space.ledger_paused()
            [pause] = paused_now(config.state_dir)  # as `cloakd status` reads it
            assert (pause.what, pause.path, pause.user, pause.by) == (
                "the ready folder of alice",
                str(ready),
                "alice",
                "service",
            )
            assert "the disk is full" in pause.error and pause.free_bytes is not None and pause.free_bytes < 4096
            said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("paused:")]
            assert said == [f"paused: {pause.text()} ({pause.error})"], said  # once
            assert "alice's photos wait until space is freed" in said[0]

            space.probe()
            assert space.paused("alice")  # no space freed yet
            filler.unlink()
            with caplog.at_level(logging.INFO, logger="cloakd"):
                space.probe(now=time.time() + PROBE_SECONDS)
                _drain(pipeline)
            assert any(r.getMessage().startswith("resumed: the ready folder of alice") for r in caplog.records)
            assert [(r.state, r.attempts) for r in ledger.rows("alice")] == [(DONE, 1)] * 3
            assert files(ready) == sorted(alice) and paused_now(config.state_dir) == []
            ledger.close()


def test_a_full_folder_that_shows_no_space_freed_is_tried_again_later_and_later(account, caplog):
    """A user's quota (EDQUOT) may be full while the file system shows space free, and freed space never shows:
    the pause ends after TRY_AGAIN_SECONDS to try again, and each try that fails again doubles the wait (said
    as "still full", not as a new pause); no try counts against the photo. A tmpfs kept full stands in for the
    quota here: this machine's kernel has no quota support (ext4 and XFS refuse usrquota)."""
    with shared_tmp("cloakd-quota-") as base:
        config = load_config(two_users(base, account))
        ready = base / "alice" / "ready"
        with small_disk(ready, "64k", account):
            fill_up(ready)
            ledger = Ledger(config.state_dir)
            alice = _enqueue_crops(ledger, "alice", base / "alice" / "out", account, 2)
            space = Space(config.state_dir)
            accounts = accounts_for(config)
            pipeline = Pipeline(config, accounts, ledger, strip_only, lambda u, p: None, lambda at: None, space)
            t = time.time()
            with caplog.at_level(logging.INFO, logger="cloakd"):
                _drain(pipeline)
                space.probe(now=t + PROBE_SECONDS)
                assert space.paused("alice")  # no space freed
                space.probe(now=t + TRY_AGAIN_SECONDS + 1)
                assert not space.paused("alice")  # time to try again
                _drain(pipeline)
                assert space.paused("alice")  # full still
                space.probe(now=t + 2 * TRY_AGAIN_SECONDS)
                assert space.paused("alice")  # now twice as long
                space.probe(now=t + 3 * TRY_AGAIN_SECONDS + 2)
                assert not space.paused("alice")
            said = [r.getMessage() for r in caplog.records if r.name == "cloakd.space"]
            where = f"the ready folder of alice ({ready})"
            assert [m.split(" is full")[0].split(" again")[0] for m in said] == [
                f"paused: {where}",
                f"trying {where}",
                f"still full: {where}",
                f"trying {where}",
            ], said
            assert said[2].endswith(f"trying again in {2 * TRY_AGAIN_SECONDS:.0f} s"), said
            assert [(r.state, r.attempts) for r in ledger.rows("alice")] == [(QUEUED, 0)] * 2
            assert files(base / "alice" / "held") == [] and files(base / "alice" / "out") == sorted(alice)
            ledger.close()


def test_a_state_directory_that_fills_mid_photo_strands_nothing(account, caplog):
    """The ledger's file system fills while a photo is processed: the step is rolled back, the photo stays in
    hand (the ledger cannot even put it back) and nothing is claimed; `cloakd status` finds the state directory
    full by itself. Space freed: the photo is put back without counting the try, and delivered once."""
    with shared_tmp("cloakd-fullstate-") as base:
        folders = user_tree(base, account)
        config = load_config(write_config(base / "cloakd.yaml", folders, account.pw_name))
        with small_disk(config.state_dir, "16m"):
            ledger = Ledger(config.state_dir)
            names = _enqueue_crops(ledger, "bee", folders["out"], account, 3)
            filled = []

            def filling(user, acct, original):  # the disk fills up while the first photo is processed
                if not filled:
                    filled.append(fill_up(config.state_dir))
                return strip_only(user, acct, original)

            space = Space(config.state_dir)
            me = Account.lookup(account.pw_name)
            pipeline = Pipeline(config, {"bee": me}, ledger, filling, lambda u, p: None, lambda at: None, space)
            with caplog.at_level(logging.INFO, logger="cloakd"):
                _drain(pipeline)
            assert space.ledger_paused() and filled
            states = [(r.state, r.attempts, r.output) for r in ledger.rows()]
            assert states[0][:2] == (WORKING, 1) and states[1:] == [(QUEUED, 0, None)] * 2  # rolled back
            assert files(folders["ready"]) == [] and files(folders["out"]) == sorted(names)
            [pause] = paused_now(config.state_dir)
            assert (pause.what, pause.user, pause.by, pause.free_bytes) == ("the state directory", None, "status", 0)
            said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("paused:")]
            assert len(said) == 1 and said[0].startswith(f"paused: the state directory ({config.state_dir}) is full")

            filled[0].unlink()
            space.probe(now=time.time() + PROBE_SECONDS)
            _drain(pipeline)
            assert [(r.state, r.attempts) for r in ledger.rows()] == [(DONE, 1)] * 3
            assert files(folders["ready"]) == sorted(names) and files(folders["archive"]) == sorted(names)
            ledger.close()
            assert paused_now(config.state_dir) == []


def test_an_output_written_just_before_the_ledger_filled_is_delivered_once(account):
    """The narrowest window of a full ledger: the output is in place, but recording it fails (the steps of
    Pipeline._deliver, done by hand up to there). Once space is back, the row is settled by the output's hash:
    delivered, not written again as NAME-1."""
    with shared_tmp("cloakd-fullwindow-") as base:
        folders = user_tree(base, account)
        config = load_config(write_config(base / "cloakd.yaml", folders, account.pw_name))
        with small_disk(config.state_dir, "16m"):
            me = Account.lookup(account.pw_name)
            ledger = Ledger(config.state_dir)
            [name] = _enqueue_crops(ledger, "bee", folders["out"], account, 1)
            pipeline = Pipeline(config, {"bee": me}, ledger, strip_only, lambda u, p: None, lambda at: None)
            row = pipeline.claim()
            result = strip_only(None, me, read_photo(me, folders["out"] / name, [folders["out"]]))
            output = folders["ready"] / name
            ledger.plan_output(row.id, str(output), hashlib.sha256(result.data).hexdigest())
            deliver.write_new(me, output, result.data, tag=str(row.id))
            filler = fill_up(config.state_dir)
            with pytest.raises(LedgerFull) as full:
                ledger.delivered(row.id)
            pipeline.set_aside(row, full.value)
            assert pipeline.claim() is None and ledger.get(row.id).state == WORKING
            filler.unlink()
            pipeline.space.probe(now=time.time() + PROBE_SECONDS)
            _drain(pipeline)
            row = ledger.get(row.id)
            assert (row.state, row.attempts, row.output) == (DONE, 1, str(output))
            assert files(folders["ready"]) == [name] and files(folders["archive"]) == [name]
            ledger.close()


def test_a_full_state_directory_rolls_each_step_back_and_the_ledger_recovers(tmp_path: Path):
    """Every step on a full disk raises LedgerFull (naming the file) and changes nothing; the connection is
    left usable, and once space is back every step works and the file checks out."""
    with small_disk(tmp_path / "state", "16m") as state:
        ledger = Ledger(state)
        for i in range(5):
            ledger.enqueue("bee", f"/o/{i}.jpg", 10, i)
        row = ledger.claim(["bee"])
        before = ledger.rows()
        filler = fill_up(state)
        steps = [
            lambda: ledger.enqueue("bee", "/o/new.jpg", 10, 1),
            lambda: ledger.claim(["bee"]),
            lambda: ledger.plan_output(row.id, "/r/0.jpg", "0ff"),
            lambda: ledger.finish(row.id, DONE, original="/arch/0.jpg"),
            lambda: ledger.retry(row.id, "x", time.time()),
            lambda: ledger.put_back(row.id),
        ]
        full = state / "ledger.sqlite3"
        for step in steps * 2:  # twice: a failed step leaves no transaction open behind it
            with pytest.raises(LedgerFull, match=re.escape(f"{full}: nothing could be recorded: the disk is full")):
                step()
        assert ledger.rows() == before and Ledger(state, readonly=True).rows() == before
        filler.unlink()
        assert ledger.enqueue("bee", "/o/new.jpg", 10, 1) is not None
        ledger.finish(row.id, DONE, original="/arch/0.jpg")
        ledger.close()
        again = Ledger(state)
        assert [(r.path, r.state) for r in again.rows()][:2] == [("/o/0.jpg", DONE), ("/o/1.jpg", QUEUED)]
        assert len(again.rows()) == 6
        again.close()
        assert _integrity(state) == "ok"


def _integrity(state: Path) -> str:
    db = sqlite3.connect(state / "ledger.sqlite3")
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


_COMMITTER = """
import sys
from pathlib import Path
from cloakd.daemon.ledger import DONE, Ledger
ledger = Ledger(Path(sys.argv[1]))
start = int(sys.argv[2])
for i in range(start, start + 100000):
    ledger.enqueue("bee", f"/o/{i:07d}.jpg", i, i)
    if i % 3 == 0:
        claimed = ledger.claim(["bee"])
        ledger.finish(claimed.id, DONE, original=f"/arch/{claimed.path[3:]}")
    print(i, flush=True)
"""


def _commit_until_killed(state: Path, start: int, commits: int) -> list[int]:
    """A child commits rows ``start``, ``start + 1``... (printing each number once its steps are committed) and
    is killed with SIGKILL after about ``commits`` of them; returns the numbers it reported."""
    child = subprocess.Popen([sys.executable, "-c", _COMMITTER, str(state), str(start)], stdout=subprocess.PIPE)
    done = []
    for line in child.stdout:
        done.append(int(line))
        if len(done) >= commits:
            child.kill()
            break
    child.wait()
    done += [int(line) for line in child.stdout.read().decode().splitlines(keepends=True) if line.endswith("\n")]
    return done


def _whole(state: Path, reported: list[int]) -> list[int]:
    """The ledger's rows (by number) after kills: every reported one, whole; beyond them at most the one
    in progress at each kill. The file checks out."""
    ledger = Ledger(state)
    rows = ledger.rows()
    numbers = sorted(r.size for r in rows)
    assert set(reported) <= set(numbers), "a reported commit is missing"
    assert (not reported or len(numbers) - len(reported) <= 4) and len(set(numbers)) == len(numbers)
    for r in rows:
        assert r.path == f"/o/{r.size:07d}.jpg" and r.mtime_ns == r.size
        assert r.state in (QUEUED, WORKING) or (r.state == DONE and r.original == f"/arch/{r.size:07d}.jpg")
    ledger.close()
    assert _integrity(state) == "ok"
    return numbers


def test_kill_9_in_the_middle_of_commits_loses_no_reported_commit(tmp_path: Path):
    """Children killed with SIGKILL while committing (through WAL checkpoints): every commit a child reported
    is there, whole, and the file checks out."""
    rng = random.Random(19)
    state, reported = tmp_path / "state", []
    for _ in range(4):
        reported += _commit_until_killed(state, (reported[-1] + 2) if reported else 0, rng.randint(200, 600))
    _whole(state, reported)


def test_a_torn_wal_keeps_a_prefix_of_the_commits(tmp_path: Path):
    """A WAL cut short at random offsets (a torn write at a power cut) after kills: the ledger opens, holds a
    prefix of the commits, each row whole, and checks out; never an error or a half row."""
    rng = random.Random(20)
    state, reported = tmp_path / "state", []
    for _ in range(3):
        reported += _commit_until_killed(state, (reported[-1] + 2) if reported else 0, rng.randint(10, 35))
    wal = state / "ledger.sqlite3-wal"
    assert 0 < wal.stat().st_size < 1000 * 4120  # under SQLite's auto-checkpoint: every commit is in the WAL
    shutil.copytree(state, tmp_path / "whole")
    everything = _whole(tmp_path / "whole", reported)
    for cut in range(8):
        torn = tmp_path / f"torn{cut}"
        shutil.copytree(state, torn)
        with open(torn / wal.name, "r+b") as f:
            f.truncate(rng.randrange(0, wal.stat().st_size))
        ledger = Ledger(torn)
        kept = sorted(r.size for r in ledger.rows())
        ledger.close()
        assert kept == everything[: len(kept)], "not a prefix of the commits"
        _whole(torn, [])


def test_a_damaged_ledger_is_refused_with_what_to_do_and_left_as_it_is(tmp_path: Path):
    """Never an empty ledger in place of a damaged one (that would deliver everything again)."""
    state = tmp_path / "state"
    ledger = Ledger(state)
    for i in range(300):
        ledger.enqueue("bee", f"/o/{i:04d}.jpg", i, i)
    ledger.close()  # checkpointed into the main file
    path = state / "ledger.sqlite3"
    good = path.read_bytes()
    for offset, what in ((4096, "page"), (0, "header")):
        damaged = bytearray(good)
        damaged[offset : offset + 4096] = random.Random(offset).randbytes(4096)
        path.write_bytes(bytes(damaged))
        with pytest.raises(LedgerDamaged) as refused:
            Ledger(state)
        message = str(refused.value)
        assert message.startswith(f"the ledger {path} is damaged (") and "restore it from a backup" in message, what
        assert "sqlite3 " in message and ".recover" in message
        assert path.read_bytes() == bytes(damaged), what  # left for recovery, not replaced
        assert not (state / "ledger.sqlite3-wal").exists() or (state / "ledger.sqlite3-wal").stat().st_size == 0


def test_a_write_or_a_copy_into_a_full_folder_leaves_no_partial_file(account):
    """The temporary file of a write (ready folder) or of a copy across file systems (archive, held) that
    found no space is removed, and the error names where it was going."""
    with shared_tmp("cloakd-partial-") as base:
        folders = user_tree(base, account, "out")
        me = Account.lookup(account.pw_name)
        data = random.Random(3).randbytes(200_000)
        with small_disk(base / "small", "64k", account) as small:
            with pytest.raises(OSError) as e:
                deliver.write_new(me, small / "big.jpg", data, tag="7")
            assert e.value.errno == errno.ENOSPC and str(e.value.filename).startswith(f"{small}/"), e.value
            assert files(small) == []
            source = folders["out"] / "big.jpg"
            source.write_bytes(data)
            os.chown(source, account.pw_uid, account.pw_gid)
            with pytest.raises(OSError) as e:
                deliver.move_new(me, source, small / "sub" / "big.jpg", tag="8")
            assert e.value.errno == errno.ENOSPC and f"{small}/" in f"{e.value.filename} {e.value.filename2}"
            assert files(small) == [] and source.read_bytes() == data  # the original stays where it was
