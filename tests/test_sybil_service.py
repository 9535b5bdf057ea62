"""The user's identity in the service: enrolled references plus the references folder, and Sybil images made
in the background (daemon/identity.py, daemon/sybil.py) or by `cloakd sybil`.

The user's references are 4 photos of Bill Gates; the Sybil candidates are photos of Jackie Chan
(Jackie_Chan_0005 shows two faces: a candidate that must be refused).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cloakd.core.photo.decode import decode
from cloakd.daemon.cli.enrol import describe_for_enrolment
from cloakd.daemon.config import load_config
from cloakd.daemon.identity import UserReferences
from cloakd.daemon.ledger import Ledger
from cloakd.daemon.privileges import Account
from cloakd.daemon.references import ReferenceStore
from cloakd.daemon.sybil import SybilJob, SybilRecord, make_one, photos_waiting
from cloakd.daemon.watch import Candidates
from cloakd.daemon.worker import Pipeline
from conftest import CLOAKD, DATA
from pipeline_child import strip_only
from servicekit import Service, copy_as, files, second_account, shared_tmp, user_tree, wait_for, write_config

USER_PHOTOS = [DATA / "faces" / "Bill_Gates" / f"Bill_Gates_000{i}.jpg" for i in range(1, 5)]
CANDIDATE = DATA / "faces" / "Jackie_Chan" / "Jackie_Chan_0006.jpg"
TWO_FACES = DATA / "faces" / "Jackie_Chan" / "Jackie_Chan_0005.jpg"
ONE_THREAD = {**os.environ, "CLOAKD_THREADS": "1"}


@pytest.fixture(scope="module")
def one_thread():
    """The models in this process run on one thread (the machine is shared), as the service's do."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def local(tmp_path: Path):
    """One user (the current account) with outbound, ready, held, archive, references, Sybil folders."""
    folders = {name: tmp_path / name for name in ("out", "ready", "held", "archive", "refs", "cands", "sybil")}
    for folder in folders.values():
        folder.mkdir()
    return tmp_path, folders


def local_config(base: Path, folders: dict[str, Path], **settings):
    return load_config(
        write_config(
            base / "cloakd.yaml",
            folders,
            Account.current().name,
            user_sybil={"candidates": str(folders["cands"]), "output": str(folders["sybil"]), "rate": "3600/hour"},
            **settings,
        )
    )


def enrol(analyzer, state_dir: Path, photos: list[Path], replace: bool = False) -> None:
    described = describe_for_enrolment(analyzer, photos)
    ReferenceStore(state_dir, analyzer.extractor.name).enrol(
        "bee", described, analyzer.extractor.match_threshold, replace=replace
    )


def test_references_are_enrolled_plus_folder_and_follow_a_new_enrolment(local, analyzer, one_thread, caplog):
    base, folders = local
    refs = folders["refs"]
    no_face = DATA / "metadata" / "BlueSquare.jpg"
    for photo in (DATA / "faces" / "Bill_Gates" / "Bill_Gates_0005.jpg", TWO_FACES, no_face):
        (refs / photo.name).write_bytes(photo.read_bytes())
    config = local_config(base, folders, user_references=str(refs))
    user, account = config.users["bee"], Account.current()
    references = UserReferences(analyzer, config.state_dir)
    caplog.set_level(logging.INFO, "cloakd")
    assert references.get(user, account).shape == (1, 128)  # the folder's one usable photo, nothing enrolled
    rejected = [r.getMessage() for r in caplog.records if "reference photo not used" in r.getMessage()]
    assert len(rejected) == 2
    assert any("Jackie_Chan_0005.jpg: 2 faces" in m for m in rejected)
    assert any("BlueSquare.jpg: no face found" in m for m in rejected)

    enrol(analyzer, config.state_dir, USER_PHOTOS)  # while "the service" runs: picked up without a restart
    caplog.clear()
    assert references.get(user, account).shape == (5, 128)
    assert not any("reference photo not used" in r.getMessage() for r in caplog.records)  # once per listing
    # every extractor of the cloak described the same faces (where Sybil images are pulled in each space)
    spaces = references.spaces(user, account)
    assert {k: v.shape for k, v in spaces.items()} == {e.name: (5, e.dim) for e in analyzer.cloak_extractors}
    assert np.array_equal(spaces[analyzer.extractor.name], references.get(user, account))
    for e in analyzer.cloak_extractors:  # a face's descriptors, not another photo's: the user's own are close
        assert np.linalg.norm(spaces[e.name] - spaces[e.name].mean(0), axis=1).max() < e.other_person
    enrol(analyzer, config.state_dir, USER_PHOTOS[:2], replace=True)
    assert references.get(user, account).shape == (3, 128)

    (config.state_dir / "users" / "bee" / "references.npz").write_bytes(b"not a record")
    caplog.clear()
    assert references.get(user, account).shape == (1, 128)  # an unreadable record is said, and not used
    assert any("unreadable reference record" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_sybil_job_waits_while_photos_are_waiting(local, analyzer, one_thread):
    base, folders = local
    (folders["cands"] / TWO_FACES.name).write_bytes(TWO_FACES.read_bytes())
    (folders["out"] / "BlueSquare.jpg").write_bytes((DATA / "metadata" / "BlueSquare.jpg").read_bytes())
    config = local_config(base, folders)
    user, accounts = config.users["bee"], {"bee": Account.current()}
    enrol(analyzer, config.state_dir, USER_PHOTOS)
    ledger = Ledger(config.state_dir)
    arriving = Candidates(config.stable_seconds)
    pipeline = Pipeline(config, accounts, ledger, strip_only, arriving.note, lambda at: None)
    job = SybilJob(
        analyzer,
        UserReferences(analyzer, config.state_dir),
        config.state_dir,
        busy=lambda: photos_waiting(config, ledger, arriving),
    )
    record = SybilRecord(config.state_dir, "bee")

    photo = folders["out"] / "BlueSquare.jpg"
    st = photo.stat()
    ledger.enqueue("bee", str(photo), st.st_size, st.st_mtime_ns)
    assert photos_waiting(config, ledger, arriving) == "1 photos queued or in progress"
    assert job.run(user, accounts["bee"]) is None and record.load() == {}  # nothing looked at
    row = pipeline.claim()
    assert job.run(user, accounts["bee"]) is None and record.load() == {}  # in hand: still waiting
    pipeline.handle(row)
    ledger.enqueue("removed", "/srv/removed/out/photo.jpg", 1, 1)  # a user no longer configured: no worker takes it
    arriving.note("bee", str(folders["out"] / "new.jpg"))
    assert photos_waiting(config, ledger, arriving) == "photos are arriving"
    arriving.take_stable(accounts)  # the noted file does not exist: dropped

    outcome = job.run(user, accounts["bee"])  # nothing waits: the job goes on (and refuses the candidate)
    assert outcome is not None and outcome.exhausted and files(folders["sybil"]) == []
    assert outcome.reason == f"all Sybil candidates used: add more to {folders['cands']}"
    assert [e["state"] for e in record.load().values()] == ["refused"]
    assert "2 faces" in next(iter(record.load().values()))["reason"]
    ledger.close()

    later = datetime.now() + timedelta(hours=3)
    closed = local_config(base, folders, processing_windows=[f"{later:%H}:00-{later + timedelta(hours=1):%H}:00"])
    ledger = Ledger(closed.state_dir)
    assert photos_waiting(closed, ledger, arriving) == "outside the processing windows"
    ledger.close()


def test_cli_sybil_without_enrolment_is_a_clear_error(tmp_path: Path):
    (tmp_path / "cands").mkdir()
    result = subprocess.run(
        [
            str(CLOAKD),
            "sybil",
            "--user",
            "bee",
            "--candidates",
            str(tmp_path / "cands"),
            "--out",
            str(tmp_path / "out"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=ONE_THREAD,
    )
    assert result.returncode == 2, result.stderr
    assert "user 'bee' is not enrolled" in result.stderr
    assert "run 'cloakd enrol --user bee PHOTOS' first" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_sybil_uses_each_candidate_once_and_counts_an_existing_output_as_used(tmp_path: Path, analyzer, one_thread):
    state, cands, out = tmp_path / "state", tmp_path / "cands", tmp_path / "out"
    cands.mkdir()
    out.mkdir()
    for photo in (CANDIDATE, TWO_FACES, DATA / "faces" / "Jackie_Chan" / "Jackie_Chan_0003.jpg"):
        (cands / photo.name).write_bytes(photo.read_bytes())
    enrol(analyzer, state, USER_PHOTOS)
    crashed = hashlib.sha256((cands / "Jackie_Chan_0003.jpg").read_bytes()).hexdigest()
    (out / f"sybil-{crashed[:12]}.jpg").write_bytes(b"written just before a crash")  # but not recorded
    result = subprocess.run(
        [
            str(CLOAKD),
            "sybil",
            "--user",
            "bee",
            "--candidates",
            str(cands),
            "--out",
            str(out),
            "--state-dir",
            str(state),
            "--count",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ONE_THREAD,
    )
    assert result.returncode == 2  # 1 of the 2 asked for: no candidate left for the second
    assert "1 of 2 Sybil images made: all Sybil candidates used: add more to" in result.stderr
    assert f"not used: {cands / TWO_FACES.name}: 2 faces" in result.stderr
    made = hashlib.sha256(CANDIDATE.read_bytes()).hexdigest()
    [line] = result.stdout.splitlines()
    output = out / f"sybil-{made[:12]}.jpg"
    assert line.startswith(f"{cands / CANDIDATE.name} -> {output}: distance to bee's features 0.")
    before, after = map(float, line.rsplit(" ", 3)[1::2])
    assert after < before - 0.15
    record = SybilRecord(state, "bee").load()
    assert {e["name"]: (e["state"], e.get("reason", "")) for e in record.values()} == {
        CANDIDATE.name: ("made", ""),
        "Jackie_Chan_0003.jpg": ("made", "found already written"),
        TWO_FACES.name: ("refused", "2 faces: a Sybil candidate must show one face"),
    }
    assert sorted(files(out)) == sorted([f"sybil-{crashed[:12]}.jpg", f"sybil-{made[:12]}.jpg"])


def test_a_candidate_linking_outside_the_candidates_folder_is_refused(analyzer, one_thread):
    owner = second_account()
    with shared_tmp("cloakd-sybil-") as base:
        folders = user_tree(base, owner, "cands", "sybil")
        secret = base / "someone-else.jpg"  # outside the user's folder (and root's)
        secret.write_bytes(CANDIDATE.read_bytes())
        os.symlink(secret, folders["cands"] / "friend.jpg")
        account = Account.lookup(owner.pw_name)
        record = SybilRecord(base / "state", "bee")
        references = {
            analyzer.extractor.name: np.stack([d.descriptor for d in describe_for_enrolment(analyzer, USER_PHOTOS)])
        }
        outcome = make_one(analyzer, account, folders["cands"], folders["sybil"], references, record)
        assert outcome.made is None and outcome.exhausted
        assert len(outcome.refused) == 1
        label, why = outcome.refused[0]
        assert label.endswith("friend.jpg")
        assert f"leads to {secret}" in why and "Sybil candidates folder: cloakd does not follow it" in why
        assert files(folders["sybil"]) == [] and record.load() == {}


@pytest.mark.slow
def test_service_makes_a_sybil_image_after_a_reload_and_an_enrolment(analyzer, one_thread):
    owner = second_account()
    with shared_tmp("cloakd-sybil-e2e-") as base:
        folders = user_tree(base, owner, "out", "ready", "held", "archive", "cands", "sybil")
        for photo in (CANDIDATE, TWO_FACES):
            copy_as(photo, folders["cands"] / photo.name, owner)
        config = write_config(base / "cloakd.yaml", folders, owner.pw_name, user_mode="mid")
        state = base / "state"
        with Service(config) as service:
            service.wait_ready()
            write_config(
                config,
                folders,
                owner.pw_name,
                user_mode="mid",  # the Sybil job comes with a reload
                user_sybil={"candidates": str(folders["cands"]), "output": str(folders["sybil"]), "rate": "3600/hour"},
            )
            service.signal(signal.SIGHUP)
            wait_for(lambda: "bee: no Sybil images" in service.log(), 30, "the warning without references", service)
            enrolled = subprocess.run(
                [str(CLOAKD), "enrol", "--user", "bee", "--state-dir", str(state), *map(str, USER_PHOTOS)],
                capture_output=True,
                text=True,
                timeout=120,
                env=ONE_THREAD,
            )
            assert enrolled.returncode == 0, enrolled.stderr
            wait_for(lambda: files(folders["sybil"]) != [], 120, "a Sybil image", service)
            wait_for(lambda: "all Sybil candidates used" in service.log(), 30, "the next tick", service)
            log = service.log_path.read_text()
            status = subprocess.run(
                [str(CLOAKD), "status", "--config", str(config)], capture_output=True, text=True, timeout=60
            )
            assert service.stop() == 0
        assert log.count("no Sybil images: they are pulled towards") == 1  # said once, not at every tick
        assert log.count("all Sybil candidates used") == 1

        [name] = files(folders["sybil"])  # one image: the second tick did not use the candidate again
        record = SybilRecord(state, "bee").load()
        made = record[next(h for h, e in record.items() if e["state"] == "made")]
        assert name == f"sybil-{next(h for h, e in record.items() if e['state'] == 'made')[:12]}.jpg"
        assert made["name"] == CANDIDATE.name and made["output"] == str(folders["sybil"] / name)
        assert [e["name"] for e in record.values() if e["state"] == "refused"] == [TWO_FACES.name]
        output = folders["sybil"] / name
        assert output.stat().st_uid == owner.pw_uid
        photo = decode(output.read_bytes(), label=name)
        assert not photo.exif  # no metadata
        centroid = np.stack([d.descriptor for d in describe_for_enrolment(analyzer, USER_PHOTOS)]).mean(axis=0)
        [before] = analyzer.analyse(decode(CANDIDATE.read_bytes()).pixels)
        [after] = analyzer.analyse(photo.pixels)
        assert np.linalg.norm(after.descriptor - centroid) < np.linalg.norm(before.descriptor - centroid) - 0.1
        assert made["after"] < made["before"]
        line = next(row for row in status.stdout.splitlines() if row.startswith("bee "))
        assert "4 enrolled" in line and " 1/0 " in line, status.stdout
        assert json.loads((state / "users" / "bee" / "sybil.json").read_text())["candidates"] == record


def test_an_enrolment_from_before_the_new_extractors_is_completed_by_the_folder_and_status_says_so(
    local, analyzer, one_thread, capsys
):
    """A record made when the cloak had three extractors still reads; the references folder's photos give
    the newer extractors' spaces; without them the newer extractors only push away, and status says so."""
    import io

    from cloakd.daemon.cli import main

    base, folders = local
    config = local_config(base, folders)
    user, account = config.users["bee"], Account.current()
    enrol(analyzer, config.state_dir, USER_PHOTOS[:2])
    record = config.state_dir / "users" / "bee" / "references.npz"
    new = ("facenet", "arcface_mbf")
    with np.load(io.BytesIO(record.read_bytes())) as z:
        old = {k: z[k] for k in z.files if k.removeprefix("space.") not in new}
    buf = io.BytesIO()
    np.savez(buf, **old)  # as cloakd wrote it before facenet and arcface_mbf existed
    record.write_bytes(buf.getvalue())
    Ledger(config.state_dir).close()  # status reads the service's ledger

    spaces = UserReferences(analyzer, config.state_dir).spaces(user, account)
    assert spaces["dlib_resnet"].shape[0] == 2 and not set(new) & set(spaces)
    assert main(["status", "--config", str(base / "cloakd.yaml"), "--json"]) == 0
    [bee] = json.loads(capsys.readouterr().out)["users"]
    assert bee["enrolled"] == 2 and bee["enrolled_lacks"] == list(new)
    assert main(["status", "--config", str(base / "cloakd.yaml")]) == 0
    assert "2 enrolled (lacks facenet, arcface_mbf: Sybil images push away there" in capsys.readouterr().out

    (folders["refs"] / "me.jpg").write_bytes(USER_PHOTOS[2].read_bytes())
    config = local_config(base, folders, user_references=str(folders["refs"]))
    spaces = UserReferences(analyzer, config.state_dir).spaces(config.users["bee"], account)
    assert spaces["dlib_resnet"].shape[0] == 3  # enrolled and folder
    assert {spaces[n].shape[0] for n in new} == {1}  # completed from the folder's photo
