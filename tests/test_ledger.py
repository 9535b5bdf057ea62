"""The ledger and the pipeline's order of durable steps: nothing lost, nothing done twice, even under kill -9."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
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
