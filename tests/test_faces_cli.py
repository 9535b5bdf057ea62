"""``cloakd faces`` as a user runs it: the installed console command, in a subprocess, on real photos.

Every run imports torch and loads both models (about 3 s), so the cases share runs: one ``--json`` run and
one plain run over the same mixed list of good and bad files, and one short run per missing model package.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cloakd.daemon.cli.exits import Exit
from conftest import CLOAKD
from test_photo_bad_input import png_bomb

LABELLED_GROUP = "dlib_2007_007763.jpg"  # 500x375, seven faces with dlib's hand-labelled boxes
LARGE_GROUP = "facenet-pytorch_multiface.jpg"  # 1200x630, six faces, carries EXIF and IPTC
SAME_PERSON = ("Bill_Gates/Bill_Gates_0001.jpg", "Bill_Gates/Bill_Gates_0002.jpg")
OTHER_PERSON = "Halle_Berry/Halle_Berry_0001.jpg"
DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's published decision threshold for this ResNet


def run_cloakd(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:  # put a fake package ahead of the installed one
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    return subprocess.run([str(CLOAKD), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def inputs(data_dir, tmp_path_factory) -> dict:
    """Good photos and bad files interleaved, so good files after a bad one must still be reported."""
    tmp = tmp_path_factory.mktemp("faces_cli")
    jpeg = (data_dir / "metadata" / "DSCN0010.jpg").read_bytes()
    bad = {  # file -> words its error line must contain
        tmp / "notes.jpg": "not an image",
        tmp / "cut.jpg": "truncated",
        tmp / "bomb.png": "too large",
        tmp / "gone.jpg": "No such file",
    }
    (tmp / "notes.jpg").write_text("Shopping list: milk, eggs, film for the camera.\n" * 10)
    (tmp / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp / "bomb.png").write_bytes(png_bomb(30000, 30000))
    groups = {name: data_dir / "groups" / name for name in (LABELLED_GROUP, LARGE_GROUP)}
    faces = [data_dir / "faces" / name for name in (*SAME_PERSON, OTHER_PERSON)]
    bad_files = list(bad)
    order = [
        groups[LABELLED_GROUP],
        bad_files[0],
        faces[0],
        bad_files[1],
        groups[LARGE_GROUP],
        bad_files[2],
        faces[1],
        bad_files[3],
        faces[2],
    ]
    return {
        "order": [str(p) for p in order],
        "bad": {str(p): words for p, words in bad.items()},
        "good": [str(p) for p in order if p not in bad],
        "groups": groups,
        "faces": faces,
    }


@pytest.fixture(scope="module")
def json_run(inputs) -> subprocess.CompletedProcess[str]:
    return run_cloakd("faces", "--json", *inputs["order"])


@pytest.fixture(scope="module")
def text_run(inputs) -> subprocess.CompletedProcess[str]:
    return run_cloakd("faces", *inputs["order"])


@pytest.fixture(scope="module")
def reports(json_run) -> dict[str, dict]:
    """The --json output: one JSON object per line, by photo path."""
    lines = [json.loads(line) for line in json_run.stdout.splitlines()]
    return {r["photo"]: r for r in lines}


def test_every_good_photo_is_reported_and_the_exit_status_says_some_failed(json_run, reports, inputs):
    assert json_run.returncode == Exit.FAILED
    assert list(reports) == inputs["good"]


def test_group_photos_have_the_counted_number_of_faces(reports, inputs, data_dir):
    counts = json.loads((data_dir / "groups_face_counts.json").read_text())
    for name, path in inputs["groups"].items():
        found = len(reports[str(path)]["faces"])
        assert abs(found - counts[name]["faces"]) <= 1, (name, found)


def test_each_face_has_a_box_score_five_landmarks_and_a_128_d_descriptor(reports):
    for report in reports.values():
        width, height = report["size"]
        assert report["faces"], report["photo"]
        for face in report["faces"]:
            x1, y1, x2, y2 = face["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, face["box"]
            assert 0.5 < face["score"] <= 1.0
            marks = np.array(face["landmarks"])
            assert marks.shape == (5, 2)
            assert ((marks >= [x1, y1]) & (marks <= [x2, y2])).all(), (report["photo"], face)
            left_eye, right_eye, nose, mouth_left, mouth_right = marks
            assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
            assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
            descriptor = np.array(face["descriptor"])
            assert descriptor.shape == (128,) and np.isfinite(descriptor).all() and descriptor.any()


def test_boxes_match_the_hand_labelled_faces(reports, inputs, data_dir):
    """Each box's centre lies in a distinct face box labelled by dlib's author: no false detections."""
    labelled = json.loads((data_dir / "groups_face_counts.json").read_text())[LABELLED_GROUP]
    truth = [(left, top, left + w, top + h) for top, left, w, h in labelled["boxes_top_left_width_height"]]
    matched = set()
    for face in reports[str(inputs["groups"][LABELLED_GROUP])]["faces"]:
        x1, y1, x2, y2 = face["box"]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        hits = [i for i, (l, t, r, b) in enumerate(truth) if l <= cx <= r and t <= cy <= b and i not in matched]
        assert hits, f"box {face['box']} matches no labelled face"
        matched.add(hits[0])
    assert len(matched) >= len(truth) - 1


def test_descriptors_tell_the_same_person_from_another(reports, inputs):
    """Two LFW photos of one person are within dlib's threshold; a photo of someone else is beyond it."""
    first, second, other = (np.array(reports[str(p)]["faces"][0]["descriptor"]) for p in inputs["faces"])
    assert np.linalg.norm(first - second) < DLIB_SAME_PERSON_DISTANCE
    assert np.linalg.norm(first - other) > DLIB_SAME_PERSON_DISTANCE
    assert np.linalg.norm(second - other) > DLIB_SAME_PERSON_DISTANCE


@pytest.mark.parametrize("run", ["json_run", "text_run"])
def test_each_bad_file_gets_one_specific_error_line(run, inputs, request):
    result = request.getfixturevalue(run)
    assert result.returncode == Exit.FAILED
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(inputs["bad"]), result.stderr
    for line, (path, words) in zip(lines, inputs["bad"].items()):
        assert line.startswith("cloakd: error: ") and path in line and words in line, line


def test_plain_output_shows_the_same_faces_as_json(text_run, reports):
    lines = iter(text_run.stdout.splitlines())
    for path, report in reports.items():
        width, height = report["size"]
        count = len(report["faces"])
        assert next(lines) == f"{path}: {width}x{height}, {count} face{'s' if count != 1 else ''}"
        for i, face in enumerate(report["faces"], 1):
            line = next(lines)
            assert line.startswith(f"  face {i}: box ("), line
            shown = [float(v) for v in line.split("box (")[1].split(") score")[0].replace(")-(", ",").split(",")]
            assert np.allclose(shown, face["box"], atol=1), (line, face["box"])  # both rounded, differently
            assert abs(float(line.split("score ")[1].split()[0]) - face["score"]) <= 0.001, line
            assert line.count("(") == 2 + 5  # the box corners and five landmarks
    assert next(lines, None) is None


@pytest.mark.parametrize(
    "package, missing",
    [
        ("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat"),
        ("facenet_pytorch", "data/pnet.pt"),
    ],
)
def test_a_missing_model_package_is_one_line_naming_the_file_and_the_fix(package, missing, tmp_path, data_dir):
    """A package that is installed but lacks its model files (a broken or partial install)."""
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    result = run_cloakd("faces", str(data_dir / "faces" / SAME_PERSON[0]), pythonpath=tmp_path)
    assert result.returncode == Exit.FAILED
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cloakd: error: model file ")
    assert str(tmp_path / package / missing) in lines[0] and "pip install" in lines[0], lines[0]


def test_a_missing_landmark_model_is_one_line_naming_the_file_and_the_fix(tmp_path, data_dir):
    """face-recognition-models with its ResNet but without dlib's 5-point predictor (the cloak's second
    landmark model): a command that cloaks stops at start-up, before any photo."""
    from cloakd.core.assets import package_file

    models = tmp_path / "face_recognition_models" / "models"
    models.mkdir(parents=True)
    (models.parent / "__init__.py").write_text("")
    resnet = "dlib_face_recognition_resnet_model_v1.dat"
    (models / resnet).symlink_to(package_file("face_recognition_models", f"models/{resnet}"))
    result = run_cloakd(
        "protect", str(data_dir / "faces" / SAME_PERSON[0]), "--out", str(tmp_path / "out"), pythonpath=tmp_path
    )
    assert result.returncode == Exit.FAILED and result.stdout == ""
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(models / "shape_predictor_5_face_landmarks.dat") in lines[0] and "pip install" in lines[0], lines[0]
