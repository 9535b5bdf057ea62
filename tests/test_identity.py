"""The user's identity: enrolment (reference selection), whose face gets the targeted cloak, `cloakd enrol`."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cloakd.core.identity import select_references, single_out
from cloakd.core.protect import ProtectRequest, protect
from cloakd.core.targets import TargetBank
from conftest import REPO

THRESHOLD = 0.6


def _row(paths) -> np.ndarray:
    tiles = [Image.open(p).convert("RGB") for p in paths]
    canvas = Image.new("RGB", (250 * len(tiles), 250))
    for i, t in enumerate(tiles):
        canvas.paste(t, (250 * i, 0))
    return np.asarray(canvas)


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _tile_of(face) -> int:
    return _tile_of_box(face.box)


def _tile_of_box(box) -> int:
    return int((box[0] + box[2]) / 2 // 250)


def test_enrolment_keeps_one_consistent_person(lfw_descriptors):
    names, paths, x = lfw_descriptors
    bill = np.flatnonzero(names == "Bill_Gates")[:4]
    andy = np.flatnonzero(names == "Andy_Roddick")[0]
    offered = [(paths[i].name, x[i], 1) for i in bill] + [
        (paths[andy].name, x[andy], 1),
        ("group.jpg", None, 7),
        ("empty.jpg", None, 0),
    ]
    refs = select_references(offered, THRESHOLD)
    assert refs.labels == [paths[i].name for i in bill]
    reasons = {r.label: r.reason for r in refs.rejected}
    assert "does not look like" in reasons[paths[andy].name]
    assert "7 faces" in reasons["group.jpg"] and reasons["empty.jpg"] == "no face found"
    # two photos: no majority to decide, both kept
    assert len(select_references(offered[3:5], THRESHOLD).descriptors) == 2


def test_the_reference_record_keeps_every_extractors_descriptors_and_reads_older_records(lfw_descriptors, tmp_path):
    from cloakd.daemon.references import Described, ReferenceStore

    names, paths, x = lfw_descriptors
    bill = np.flatnonzero(names == "Bill_Gates")[:3]
    other = np.random.default_rng(0).standard_normal((len(bill), 7)).astype(np.float32)  # stands for a 2nd space
    photos = [Described(paths[i].name, f"{j:064x}", x[i], 1, {"second": other[j]}) for j, i in enumerate(bill)]
    store = ReferenceStore(tmp_path, "dlib_resnet")
    store.enrol("bee", photos, THRESHOLD)
    spaces = store.spaces("bee")
    assert sorted(spaces) == ["dlib_resnet", "second"]
    assert np.array_equal(spaces["dlib_resnet"], x[bill]) and np.array_equal(spaces["second"], other)
    # enrolling more adds rows to every space; a photo described without the second space drops that space
    more = np.flatnonzero(names == "Bill_Gates")[3]
    store.enrol("bee", [Described(paths[more].name, "f" * 64, x[more], 1, {"second": other[0]})], THRESHOLD)
    assert {k: len(v) for k, v in store.spaces("bee").items()} == {"dlib_resnet": 4, "second": 4}
    store.enrol("bee", [Described("old.jpg", "e" * 64, x[more], 1)], THRESHOLD)  # an older kind of record
    assert {k: len(v) for k, v in store.spaces("bee").items()} == {"dlib_resnet": 5}
    assert np.array_equal(store.get("bee"), store.spaces("bee")["dlib_resnet"])


def test_the_users_face_is_singled_out_among_real_strangers(analyzer, data_dir):
    """Rows of real photos: the user's (never an enrolment photo) with two strangers, in every position;
    and the real group photos without the user, where nobody should be taken for the user."""
    faces_dir = data_dir / "faces"
    groups = [
        np.stack([f.descriptor for f in analyzer.analyse(np.asarray(Image.open(g).convert("RGB")))])
        for g in sorted((data_dir / "groups").glob("*.jpg"))
    ]
    users = ["Halle_Berry", "Hu_Jintao", "Roger_Federer", "Venus_Williams"]
    others = ["Tim_Henman", "Norah_Jones", "Fidel_Castro"]
    found = false_positives = 0
    for user in users:
        photos = sorted((faces_dir / user).glob("*.jpg"))
        refs = np.stack([analyzer.analyse(np.asarray(Image.open(p).convert("RGB")))[0].descriptor for p in photos[:4]])
        for pos in range(3):
            row = [faces_dir / o / f"{o}_000{pos + 1}.jpg" for o in others[:2]]
            row.insert(pos, photos[6 + pos])
            faces = analyzer.analyse(_row(row))
            chosen = single_out(np.stack([f.descriptor for f in faces]), refs, THRESHOLD)
            found += chosen is not None and _tile_of(faces[chosen]) == pos
        false_positives += sum(single_out(g, refs, THRESHOLD) is not None for g in groups)
    # bench/whose_face.py measures both over all 40 identities: 98% found, 3% of group photos mistaken
    assert found >= 11  # of 12
    assert false_positives <= 2  # of 24 group photos


def test_protect_with_references_targets_only_the_user(analyzer, data_dir):
    """Two people in one photo: the enrolled user's face is cloaked towards the target, the other away."""
    faces_dir = data_dir / "faces"
    user = sorted((faces_dir / "Nicole_Kidman").glob("*.jpg"))
    refs = np.stack([analyzer.analyse(np.asarray(Image.open(p).convert("RGB")))[0].descriptor for p in user[:4]])
    data = _jpeg(_row([faces_dir / "Pierce_Brosnan" / "Pierce_Brosnan_0002.jpg", user[7]]))
    bank = TargetBank.load()
    target = bank.centroids[bank.index("Michelle_Yeoh")]
    res = protect(analyzer, data, ProtectRequest(target=target, references=refs, steps=25, seed=2))
    assert res.ok, res.reason
    roles = {int((f.box[0] + f.box[2]) / 2 // 250): f.role for f in res.faces}
    assert roles[1] == "user" and roles[0] == "other"
    for f in res.faces:
        assert f.verified and f.moved >= 0.25
    left = protect(analyzer, data, ProtectRequest(target=target, references=refs, others="leave", steps=25, seed=2))
    assert left.ok and sorted(f.role for f in left.faces) == ["left", "user"]
    out = np.asarray(Image.open(io.BytesIO(left.data)).convert("RGB")).astype(int)
    src = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    # the left face's tile changed only by re-encoding, the user's by the cloak
    assert np.abs(out[:, :250] - src[:, :250]).mean() < np.abs(out[:, 250:] - src[:, 250:]).mean()


@pytest.mark.slow
def test_enrol_cli_persists_references_and_target(data_dir, tmp_path):
    faces_dir = data_dir / "faces" / "Jennifer_Garner"
    photos = sorted(faces_dir.glob("*.jpg"))[:4]
    junk = tmp_path / "notes.jpg"
    junk.write_text("not a photo")

    def enrol(*items, **kw):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "cloakd.daemon.cli",
                "enrol",
                "--user",
                "jen",
                "--state-dir",
                str(tmp_path / "state"),
                *map(str, items),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            **kw,
        )

    run = enrol(*photos, data_dir / "groups" / "dlib_2007_007763.jpg", junk)
    assert run.returncode == 0, run.stderr
    enrolled = int(re.search(r"jen: (\d+) reference photos enrolled", run.stdout)[1])
    assert 3 <= enrolled <= 4 and "target class" in run.stdout
    assert "7 faces" in run.stderr and "notes.jpg" in run.stderr
    assert run.stderr.count("not used") + run.stderr.count("skipping") == 6 - enrolled
    record = tmp_path / "state" / "users" / "jen" / "target.json"
    chosen = record.read_text()
    again = enrol(sorted(faces_dir.glob("*.jpg"))[4])
    assert again.returncode == 0 and f"{enrolled + 1} reference photos enrolled" in again.stdout
    assert "kept" in again.stdout
    assert record.read_text() == chosen  # never silently changed
    nothing = enrol(junk)
    assert nothing.returncode == 2 and "jen" not in nothing.stdout
    # protect --user: only the enrolled user's face gets the targeted cloak, the other is left as asked
    row = tmp_path / "row.jpg"
    row.write_bytes(
        _jpeg(_row([data_dir / "faces" / "Keanu_Reeves" / "Keanu_Reeves_0003.jpg", sorted(faces_dir.glob("*.jpg"))[9]]))
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloakd.daemon.cli",
            "protect",
            str(row),
            "--user",
            "jen",
            "--others",
            "leave",
            "--out",
            str(tmp_path / "out"),
            "--json",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    faces = json.loads(run.stdout.splitlines()[0])["faces"]
    assert {_tile_of_box(f["box"]): f["role"] for f in faces} == {0: "left", 1: "user"}
