"""Is a detection a face? The check a detection must pass before it counts as one, and the stricter bar a
face must clear before a target class is chosen from it.

MTCNN alone also "finds" faces in textures (a rug, the blurred ground under a flower: ONet scores 0.73 and
0.954 on ../shared/data/metadata) and places its five landmarks where a face's would be, so neither its
score nor the landmarks' geometry tells these apart from real faces. A recogniser does: the MobileFaceNet of
``arcface_mbf``, asked for its raw (not yet normalised) embedding of the aligned chip, answers with a norm
of 3.1-6.7 for every real face measured and 15-28 for those textures (bench/plausible.py, README
"Measured"). So a detection counts as a face when

1. its landmarks are in a face's order (eyes above the nose, the nose above the mouth, left of right) and
   its eyes are a plausible distance apart for its box (a cheap guard against broken geometry), and
2. the recogniser's embedding norm is at most :data:`MAX_NORM` (the geometric middle of the largest real
   face's 6.7 and the smallest texture's 15.1).

A target class is chosen only from faces that also have an ONet score of at least
:data:`TARGET_MIN_SCORE` and a norm of at most :data:`TARGET_MAX_NORM`: a wrong target would stay with a
user for good.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .align import extract_chips
from .extractors import Extractor, load_extractor

#: the recogniser whose embedding norm judges a detection (its raw embedding: ``embed``)
CHECK_EXTRACTOR = "arcface_mbf"
#: largest embedding norm of a detection that counts as a face
MAX_NORM = 10.0
#: the stricter bar for the faces a target class is chosen from
TARGET_MIN_SCORE = 0.99
TARGET_MAX_NORM = 7.0
#: inter-ocular distance as a fraction of the box width (real faces measured: 0.33-0.51; profile to frontal)
EYES_APART = (0.15, 0.8)


@dataclass(frozen=True)
class Rejected:
    """A detection that does not count as a face: where, MTCNN's score, and why, in a few words."""

    box: np.ndarray  # x1, y1, x2, y2
    score: float
    reason: str

    def as_dict(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "reason": self.reason,
        }


def geometry_doubt(box: np.ndarray, landmarks: np.ndarray) -> str:
    """Why five landmarks cannot be a face's ("" when they can): eyes, nose and mouth out of order, or the
    eyes too close or too far apart for the box."""
    left_eye, right_eye, nose, mouth_left, mouth_right = np.asarray(landmarks, np.float64)
    if not (left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]):
        return "landmarks implausible (left and right swapped)"
    eyes_y, mouth_y = max(left_eye[1], right_eye[1]), min(mouth_left[1], mouth_right[1])
    if not eyes_y < nose[1] < mouth_y:
        return "landmarks implausible (eyes, nose and mouth not one above the other)"
    width = float(box[2] - box[0])
    apart = float(np.linalg.norm(right_eye - left_eye)) / width if width > 0 else 0.0
    if not EYES_APART[0] <= apart <= EYES_APART[1]:
        return f"landmarks implausible (eyes {apart:.2f} of the box width apart)"
    return ""


def norm_doubt(norm: float) -> str:
    """Why a recogniser's embedding norm says this is no face ("" when it may be one)."""
    if norm > MAX_NORM:
        return f"the recogniser does not see a face (feature norm {norm:.1f}, faces have at most {MAX_NORM:g})"
    return ""


def fit_for_target(score: float, norm: float | None) -> bool:
    """Whether a face clears the stricter bar for choosing a target class from it."""
    return norm is not None and score >= TARGET_MIN_SCORE and norm <= TARGET_MAX_NORM


class PlausibilityCheck:
    """The recogniser's second look at detections. ``extractor``: an already loaded ``arcface_mbf`` to share
    (an analyser that cloaks with it has one); otherwise the shipped one is loaded on first use (2 MB)."""

    def __init__(self, extractor: Extractor | None = None):
        if extractor is not None and extractor.name != CHECK_EXTRACTOR:
            raise ValueError(f"the plausibility check needs the {CHECK_EXTRACTOR} extractor, not {extractor.name}")
        self._extractor = extractor

    @property
    def extractor(self) -> Extractor:
        if self._extractor is None:
            self._extractor = load_extractor(CHECK_EXTRACTOR)
        return self._extractor

    @torch.inference_mode()
    def norms(self, image: np.ndarray, boxes: list[np.ndarray], landmarks: list[np.ndarray]) -> np.ndarray:
        """The recogniser's raw embedding norm of each detection's chip (its own alignment)."""
        if not boxes:
            return np.zeros(0, np.float32)
        geometry = self.extractor.geometry
        chips = extract_chips(image, [geometry.transform(lm, b) for b, lm in zip(boxes, landmarks)], geometry.size)
        x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
        return self.extractor.embed(x).norm(dim=1).numpy()

    def doubts(self, image: np.ndarray, boxes: list[np.ndarray], landmarks: list[np.ndarray]) -> tuple[list[str], list]:
        """Per detection: why it is not a face ("" if it is one) and its embedding norm (None when its
        geometry already ruled it out)."""
        reasons = [geometry_doubt(b, lm) for b, lm in zip(boxes, landmarks)]
        keep = [i for i, r in enumerate(reasons) if not r]
        norms: list = [None] * len(boxes)
        for i, n in zip(keep, self.norms(image, [boxes[i] for i in keep], [landmarks[i] for i in keep])):
            norms[i] = float(n)
            reasons[i] = norm_doubt(float(n))
        return reasons, norms


__all__ = [
    "MAX_NORM",
    "TARGET_MAX_NORM",
    "TARGET_MIN_SCORE",
    "PlausibilityCheck",
    "Rejected",
    "fit_for_target",
    "geometry_doubt",
    "norm_doubt",
]
