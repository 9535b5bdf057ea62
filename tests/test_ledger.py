"""The ledger and the pipeline's order of durable steps: nothing lost, nothing done twice, even under kill -9."""

from __future__ import annotations

import hashlib
import os
import random
import re
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
from cloakd.daemon.ledger import DONE, GONE, HELD, QUEUED, WORKING, Ledger
from cloakd.daemon.privileges import Account, read_photo
from cloakd.daemon.worker import REASON_SUFFIX, Pipeline
from conftest import DATA, REPO
from pipeline_child import strip_only
from servicekit import bad_files, copy_as, files, second_account, shared_tmp, tiny_photos, user_tree, write_config


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
