"""MTCNN face detection on real photos: group photos with hand-labelled faces, all 480 LFW faces,
photos without people, large photos through the working copy, and the NMS against a plain reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloakd.core.detect import Detections, FaceDetector, nms
from cloakd.core.errors import CloakdError, ImageError, ModelMissingError


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="session")
def detector() -> FaceDetector:
    return FaceDetector()


# --- NMS -------------------------------------------------------------------------------------------


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: str) -> list[int]:
    """Textbook greedy NMS, one pair at a time in plain Python."""

    def area(b):
        return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)

    remaining = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        survivors = []
        for j in remaining:
            a, b = boxes[best], boxes[j]
            inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
            denom = min(area(a), area(b)) if overlap == "min" else area(a) + area(b) - inter
            if inter / denom <= threshold:
                survivors.append(j)
        remaining = survivors
    return keep


@pytest.mark.parametrize("overlap", ["union", "min"])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_plain_greedy_reference(overlap, threshold):
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 40, 400):
        corner = rng.uniform(0, 300, (n, 2))
        corner[: n // 4, 0] = 100.0  # ties on x1, as on PNet's grid
        boxes = np.hstack([corner, corner + rng.uniform(4, 80, (n, 2))])
        scores = rng.permutation(n) / max(n, 1)  # distinct scores: the greedy order is unambiguous
        got = nms(boxes, scores, threshold, overlap).tolist()
        assert got == _reference_nms(boxes, scores, threshold, overlap)


def test_nms_min_overlap_removes_a_box_inside_another():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 6, 6]], dtype=float)  # IoU 0.16, intersection/min 1.0
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.7, "union").tolist() == [0, 1]
    assert nms(boxes, scores, 0.7, "min").tolist() == [0]


# --- group photos ----------------------------------------------------------------------------------


def _iou(a, b) -> float:
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _true_detections(dets: Detections, labelled: list[list[int]]) -> int:
    """Detections matched one-to-one to labelled [top, left, width, height] boxes (IoU >= 0.3 or centre in)."""
    truth = [(left, top, left + w, top + h) for top, left, w, h in labelled]
    free = set(range(len(truth)))
    matched = 0
    for box in dets.boxes:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        hit = [
            j
            for j in sorted(free)
            if _iou(box, truth[j]) >= 0.3 or (truth[j][0] <= cx <= truth[j][2] and truth[j][1] <= cy <= truth[j][3])
        ]
        if hit:
            free.remove(hit[0])
            matched += 1
    return matched


def test_group_photos_recall_and_false_detections(detector, data_dir):
    counts = json.loads((data_dir / "groups_face_counts.json").read_text())
    faces = found = false = 0
    report = []
    for name, info in sorted(counts.items()):
        dets = detector.detect(_rgb(data_dir / "groups" / name))
        if info["boxes_top_left_width_height"]:
            true = _true_detections(dets, info["boxes_top_left_width_height"])
        else:  # counted by eye: anything beyond the count is false
            true = min(len(dets), info["faces"])
        faces += info["faces"]
        found += true
        false += len(dets) - true
        report.append(f"{name}: {len(dets)} detections, {true}/{info['faces']} faces")
    summary = "; ".join(report)
    assert found >= 0.9 * faces, summary
    assert false <= 2, summary


def test_photo_of_one_person(detector, data_dir):
    dets = detector.detect(_rgb(data_dir / "metadata" / "sony-cybershot.jpg"))
    assert len(dets) == 1


@pytest.mark.parametrize(
    "name", ["HMD_Nokia_8.3_5G.jpg", "22-canon_tags.jpg", "36-memory_error.jpg", "iphone_hdr_YES.jpg"]
)
def test_photos_without_people_give_no_detections(detector, data_dir, name):
    assert len(detector.detect(_rgb(data_dir / "metadata" / name))) == 0


# --- LFW: one centred face per image --------------------------------------------------------------


@pytest.fixture(scope="module")
def lfw_central_faces(detector, data_dir) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Per LFW image: (box, landmarks) of the detection covering the image centre, or None."""
    out = {}
    for path in sorted((data_dir / "faces").glob("*/*.jpg")):
        image = _rgb(path)
        centre = np.array(image.shape[1::-1]) / 2
        dets = detector.detect(image)
        covers = np.all((dets.boxes[:, :2] <= centre) & (centre <= dets.boxes[:, 2:]), axis=1)
        # LFW faces are 70-140 px here; a box covering the centre that small would be a false detection.
        covers &= dets.boxes[:, 2] - dets.boxes[:, 0] >= 40
        first = int(np.argmax(covers)) if covers.any() else None
        out[path.name] = None if first is None else (dets.boxes[first], dets.landmarks[first])
    return out


def test_lfw_central_face_found_in_every_image(lfw_central_faces):
    assert len(lfw_central_faces) == 480
    missed = [name for name, face in lfw_central_faces.items() if face is None]
    assert missed == []


def test_lfw_landmarks_are_plausible(lfw_central_faces):
    wrong = []
    for name, face in lfw_central_faces.items():
        if face is None:
            continue
        box, (left_eye, right_eye, nose, mouth_left, mouth_right) = face
        ok = (
            left_eye[0] < right_eye[0]
            and mouth_left[0] < mouth_right[0]
            and max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
            and np.all((box[:2] <= face[1]) & (face[1] <= box[2:]))
        )
        if not ok:
            wrong.append(name)
    assert wrong == []


# --- input forms and large photos ------------------------------------------------------------------


def test_result_arrays_and_order(detector, data_dir):
    dets = detector.detect(_rgb(data_dir / "groups" / "dlib_2008_002470.jpg"))
    n = len(dets)
    assert n > 0
    assert dets.boxes.shape == (n, 4) and dets.scores.shape == (n,) and dets.landmarks.shape == (n, 5, 2)
    assert {dets.boxes.dtype, dets.scores.dtype, dets.landmarks.dtype} == {np.dtype(np.float32)}
    assert np.all(np.diff(dets.scores) <= 0)
    assert np.all(dets.boxes[:, 2:] > dets.boxes[:, :2])


def test_greyscale_is_the_same_as_grey_rgb(detector, data_dir):
    with Image.open(data_dir / "faces" / "Hu_Jintao" / "Hu_Jintao_0001.jpg") as im:
        grey = np.asarray(im.convert("L"))
    from_grey = detector.detect(grey)
    from_rgb = detector.detect(np.repeat(grey[:, :, None], 3, axis=2))
    assert len(from_grey) == len(from_rgb) >= 1
    np.testing.assert_array_equal(from_grey.boxes, from_rgb.boxes)
    np.testing.assert_array_equal(from_grey.landmarks, from_rgb.landmarks)


def test_large_photo_through_working_copy_matches_small_photo(data_dir):
    """A photo upscaled 4x and searched on a working copy of its original size finds the same faces, with
    boxes and landmarks (taken at full resolution) 4x those of the original, within a few percent."""
    small = Image.open(data_dir / "groups" / "dlib_2008_002470.jpg").convert("RGB")
    large = small.resize((small.width * 4, small.height * 4), Image.BICUBIC)
    reference = FaceDetector(max_side=None).detect(np.asarray(small))
    scaled = FaceDetector(max_side=max(small.size)).detect(np.asarray(large))
    assert len(reference) >= 5
    assert len(scaled) == len(reference)
    for box, marks in zip(reference.boxes, reference.landmarks):
        ious = [_iou(box * 4, other) for other in scaled.boxes]
        best = int(np.argmax(ious))
        side = 4 * (box[2] - box[0])
        assert ious[best] > 0.85
        assert np.abs(scaled.landmarks[best] - 4 * marks).max() < 0.05 * side


def test_images_smaller_than_a_pnet_window_give_no_detections(detector):
    dets = detector.detect(np.zeros((8, 30, 3), np.uint8))
    assert len(dets) == 0 and dets.boxes.shape == (0, 4) and dets.landmarks.shape == (0, 5, 2)


@pytest.mark.parametrize(
    "image",
    [np.zeros((64, 64, 3), np.float32), np.zeros((64, 64, 4), np.uint8), np.zeros((2, 64, 64, 3), np.uint8)],
    ids=["float", "rgba", "batch"],
)
def test_bad_image_is_rejected(detector, image):
    with pytest.raises(ImageError):
        detector.detect(image)


def test_missing_or_broken_weights_are_reported(tmp_path):
    with pytest.raises(ModelMissingError, match="pnet.pt"):
        FaceDetector(weights_dir=tmp_path)
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        (tmp_path / name).write_bytes(b"not a state dict")
    with pytest.raises(ModelMissingError, match="cannot be loaded"):
        FaceDetector(weights_dir=tmp_path)


@pytest.mark.parametrize(
    "options", [{"min_face_size": 0}, {"thresholds": (0.6, 0.7)}, {"factor": 1.2}, {"max_side": 5}]
)
def test_bad_options_are_rejected(options):
    with pytest.raises(CloakdError):
        FaceDetector(**options)
