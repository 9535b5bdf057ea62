"""Find, align and describe the faces of one photo: detector -> alignment -> extractor.

:class:`FaceAnalyzer` holds the two models (loaded once by the caller) and nothing else; every call is
a pure function of the image it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .align import ChipTransform, extract_chips
from .detect import Detections, FaceDetector
from .detect.shape_predictor import ShapePredictor, dlib_pipeline_chip, load_shape_predictor
from .extractors import CLOAK_EXTRACTORS, DEFAULT_EXTRACTOR, Extractor, load_extractor
from .photo.decode import DEFAULT_MAX_PIXELS, decode
from .plausible import CHECK_EXTRACTOR, PlausibilityCheck, Rejected, fit_for_target


@dataclass
class Face:
    """One detected face: where it is, how it is aligned and (once described) its descriptor."""

    box: np.ndarray  # x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # 5 x 2: image-left eye, image-right eye, nose, mouth left, mouth right
    transform: ChipTransform
    descriptor: np.ndarray | None = field(default=None, repr=False)
    #: the plausibility check's recogniser embedding norm (core/plausible.py); None if not checked
    norm: float | None = None

    @property
    def fit_for_target(self) -> bool:
        """Whether a target class may be chosen from this face (the stricter bar of core/plausible.py)."""
        return fit_for_target(self.score, self.norm)

    def as_dict(self, with_descriptor: bool = False) -> dict:
        d = {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
        }
        if self.norm is not None:
            d["feature_norm"] = round(float(self.norm), 3)
        if with_descriptor and self.descriptor is not None:
            d["descriptor"] = [round(float(v), 6) for v in self.descriptor]
        return d


class FaceAnalyzer:
    """Detector + extractors (+ a second landmark model). ``analyse(image)`` returns every face with its
    descriptor.

    Only detections that pass the plausibility check (core/plausible.py) count as faces: ``analyse`` returns
    those, ``examine`` also the ones it rejected and why; ``find`` is the bare detector.

    ``extractor`` is the primary extractor: faces' descriptors, identities (whose face), target classes
    and reports are in its space. ``cloak_extractors`` are the extractors an ensemble cloak is optimised
    against and verified with, the primary first (default: the primary one and the others of
    CLOAK_EXTRACTORS); each describes a face through its own alignment. Other cloaks use the primary only.
    """

    def __init__(
        self,
        detector: FaceDetector | None = None,
        extractor: Extractor | None = None,
        cloak_extractors: list[Extractor] | None = None,
        landmarks: ShapePredictor | None = None,
        check: PlausibilityCheck | None = None,
    ):
        self.detector = detector if detector is not None else FaceDetector()
        self.extractor = extractor if extractor is not None else load_extractor(DEFAULT_EXTRACTOR)
        if cloak_extractors is None:
            cloak_extractors = [self.extractor] + [
                load_extractor(n) for n in CLOAK_EXTRACTORS if n != self.extractor.name
            ]
        if not cloak_extractors or cloak_extractors[0] is not self.extractor:
            raise ValueError("the cloak extractors must start with the primary extractor")
        self.cloak_extractors = cloak_extractors
        self._landmarks = landmarks
        if check is None:
            shared = [e for e in cloak_extractors if e.name == CHECK_EXTRACTOR]
            check = PlausibilityCheck(shared[0] if shared else None)
        self.check = check

    @property
    def landmarks(self) -> ShapePredictor:
        """The second landmark model (dlib's 5-point predictor: the alignment dlib's own pipeline gives),
        which only cloaking needs: loaded on first use (1.2 s), or up front by :meth:`load_cloak_models`."""
        if self._landmarks is None:
            self._landmarks = load_shape_predictor()
        return self._landmarks

    def load_cloak_models(self) -> "FaceAnalyzer":
        """Load now what cloaking needs beyond finding and describing faces, so that a missing or damaged
        model file is an error at start-up rather than at the first photo."""
        _ = self.landmarks
        return self

    def find(self, image: np.ndarray) -> list[Face]:
        """Detect and align (no descriptors yet): every detection, before the plausibility check."""
        dets: Detections = self.detector.detect(image)
        geo = self.extractor.geometry
        return [
            Face(box, float(score), lm, geo.transform(lm, box))
            for box, score, lm in zip(dets.boxes, dets.scores, dets.landmarks)
        ]

    def transform(self, face: Face, extractor: Extractor) -> ChipTransform:
        """``face``'s chip for ``extractor``: its own alignment of the face's landmarks or box (the primary's
        came with the face)."""
        return face.transform if extractor is self.extractor else extractor.geometry.transform(face.landmarks, face.box)

    def alternate_alignments(self, image: np.ndarray, face: Face, extractor: Extractor) -> tuple[ChipTransform, ...]:
        """``face``'s chip for ``extractor`` as other landmark models would align it: for an extractor of
        dlib's chip geometry, the chip dlib's own pipeline cuts (its 5-point predictor); none otherwise."""
        if extractor.geometry.padding is None:
            return ()
        return (dlib_pipeline_chip(self.landmarks, image, self.transform(face, extractor), extractor.geometry.padding),)

    def chips(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """Exact (dlib-identical) chips, N x S x S x 3 uint8."""
        return extract_chips(image, [f.transform for f in faces])

    def describe_chips(self, chips: np.ndarray) -> np.ndarray:
        """Primary descriptors (N x D float32) of N x S x S x 3 uint8 chips."""
        return _describe(self.extractor, chips)

    def describe(self, image: np.ndarray, faces: list[Face], extractor: Extractor) -> np.ndarray:
        """Descriptors (N x D) of ``faces`` by ``extractor``, each face aligned by that extractor's geometry."""
        if extractor is self.extractor:
            return self.describe_chips(self.chips(image, faces))
        transforms = [self.transform(f, extractor) for f in faces]
        return _describe(extractor, extract_chips(image, transforms, extractor.geometry.size))

    def examine(self, image: np.ndarray) -> tuple[list[Face], list[Rejected]]:
        """The faces (detections that pass the plausibility check, described, best score first) and the
        detections that do not count as faces, each with its reason."""
        found = self.find(image)
        reasons, norms = self.check.doubts(image, [f.box for f in found], [f.landmarks for f in found])
        faces, rejected = [], []
        for face, reason, norm in zip(found, reasons, norms):
            face.norm = norm
            if reason:
                rejected.append(Rejected(face.box, face.score, reason))
            else:
                faces.append(face)
        for face, desc in zip(faces, self.describe_chips(self.chips(image, faces))):
            face.descriptor = desc
        return faces, rejected

    def analyse(self, image: np.ndarray) -> list[Face]:
        """The faces in ``image`` (detections that pass the plausibility check), described."""
        return self.examine(image)[0]

    def read(
        self, data: bytes, label: str = "input", max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> tuple[np.ndarray, list[Face]]:
        """A photo's bytes decoded as cloakd decodes every photo (content-sniffed format, EXIF orientation,
        ICC to sRGB, size guard; greyscale as RGB) and its faces described. CloakdError if undecodable."""
        rgb = decode(data, max_pixels=max_pixels, label=label).rgb
        return rgb, self.analyse(rgb)

    def describe_face(self, image: np.ndarray, face: Face) -> dict[str, np.ndarray]:
        """One face described by every cloak extractor, each through its own alignment (extractor name -> D)."""
        return {e.name: self.describe(image, [face], e)[0] for e in self.cloak_extractors}


@torch.inference_mode()
def _describe(extractor: Extractor, chips: np.ndarray) -> np.ndarray:
    if len(chips) == 0:
        return np.zeros((0, extractor.dim), np.float32)
    x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
    return extractor(x).numpy()


def main_face(faces: list[Face]) -> Face | None:
    """The face a portrait or reference photo is about: the largest one."""
    if not faces:
        return None
    return max(faces, key=lambda f: float(np.prod(f.box[2:] - f.box[:2])))
