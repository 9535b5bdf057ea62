"""Only detections that pass the plausibility check (core/plausible.py) count as faces: never cloaked, never a
target class. Real data: the false detections MTCNN makes on ../shared/data/metadata, and real faces of
groups/, faces/ and metadata/ (bench/plausible.py measures every photo of the three folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloakd.core.photo.decode import decode


def _rgb(path: Path) -> np.ndarray:
    return decode(path.read_bytes(), label=str(path)).rgb


@pytest.mark.parametrize("name", ["IMG_5195.HEIC", "kodak-dc240.jpg"])
def test_a_flower_bed_and_a_rug_hold_no_face(analyzer, data_dir, name):
    """MTCNN scores the blurred ground under a flower 0.954 and a rug beside a dog 0.729."""
    rgb = _rgb(data_dir / "metadata" / name)
    assert len(analyzer.find(rgb)) == 1  # the detector alone still "finds" one
    assert analyzer.analyse(rgb) == []
    faces, rejected = analyzer.examine(rgb)
    assert faces == [] and len(rejected) == 1
    assert "the recogniser does not see a face" in rejected[0].reason


def test_the_ear_of_a_man_seen_from_behind_is_not_a_face_but_the_couple_and_the_best_man_are(analyzer, data_dir):
    faces, rejected = analyzer.examine(_rgb(data_dir / "metadata" / "canon-ixus.jpg"))
    assert len(faces) == 3 and all(f.fit_for_target for f in faces)
    assert [round(float(r.box[0])) for r in rejected] == [13]  # the photographer at the left edge


@pytest.mark.parametrize(
    "photo, count",
    [
        ("groups/dlib_2008_002079.jpg", 6),  # small faces, down to 27 px and score 0.985
        ("groups/deepface_selfie-many-people.jpg", 5),  # MTCNN finds 5 of its 7 (two are cut by the frame)
        ("groups/facenet-pytorch_multiface.jpg", 6),  # the largest feature norm of a real face measured: 6.7
        ("faces/Britney_Spears/Britney_Spears_0008.jpg", 1),
        ("faces/John_Kerry/John_Kerry_0009.jpg", 1),
        ("faces/Andy_Roddick/Andy_Roddick_0010.jpg", 1),  # its face 51 px off the centre
    ],
)
def test_real_faces_all_count(analyzer, data_dir, photo, count):
    rgb = _rgb(data_dir / photo)
    faces, rejected = analyzer.examine(rgb)
    assert len(faces) == count == len(analyzer.find(rgb)) and rejected == []


def test_protect_cloaks_no_rejected_detection_and_reports_it(analyzer, data_dir):
    from cloakd.core import protect, request_for_target

    data = (data_dir / "metadata" / "kodak-dc240.jpg").read_bytes()
    result = protect(analyzer, data, request_for_target("Amanda_Bynes", mode="low", steps=5), label="dog")
    assert result.ok and result.faces == []
    assert [round(r.score, 3) for r in result.rejected] == [0.729]
    assert _rgb_of(result.data).shape == (480, 640, 3)


def _rgb_of(data: bytes) -> np.ndarray:
    return decode(data).rgb


def test_the_service_chooses_no_target_class_from_a_doubtful_face(analyzer, data_dir, tmp_path):
    """Without references, the service takes a user's lasting target class from the first photo with faces
    that clear the stricter bar: the rug is none, the snapshot of a woman is one."""
    from cloakd.daemon.config import Originals, UserConfig
    from cloakd.daemon.process import ProcessContext
    from cloakd.daemon.targets import TargetStore

    user = UserConfig("ann", "ann", (), tmp_path / "ready", tmp_path / "held", Originals())
    ctx = ProcessContext(analyzer, TargetStore(tmp_path / "state"), references=None)
    rug = data_dir / "metadata" / "kodak-dc240.jpg"
    assert ctx.target(user, None, rug.read_bytes(), str(rug)) is None
    assert ctx.targets.get("ann") is None
    woman = data_dir / "metadata" / "sony-cybershot.jpg"
    assert ctx.target(user, None, woman.read_bytes(), str(woman)) is not None
