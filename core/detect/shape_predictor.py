"""dlib's 5-point face landmark predictor (``shape_predictor_5_face_landmarks.dat``), in NumPy.

The predictor is an ensemble of regression trees (Kazemi and Sullivan 2014): starting from a mean shape
placed in the face's box, each of 15 cascades reads 800 pixel intensities at points fixed relative to
the current shape, and 500 depth-4 trees, each comparing pixel pairs, add their leaves' shape updates.
dlib's own pipeline (HOG detector, this predictor, ``get_face_chip``) aligns faces with it; cloakd uses it
as a second landmark model, so that the cloak is also optimised through the alignment that pipeline
would give (see cloak/views.py). The model file ships with face-recognition-models (public domain) and
is parsed here; dlib itself is only a test oracle.

File layout (dlib/image_processing/shape_predictor.h, serialize.h): version 1, the initial shape (a
column matrix: negated row and column counts, then packed floats), the forests (per cascade, per tree:
the splits as (idx1, idx2, threshold), then the leaves, each a column matrix), the anchor landmark of
each feature pixel per cascade, and its offset from that anchor in the mean shape's frame.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..align import DLIB_5POINT_TEMPLATE, ChipTransform, similarity_transform, template_in_chip
from ..errors import ModelCorruptError, ModelMissingError

MODEL_PACKAGE = "face_recognition_models"
MODEL_FILE = "models/shape_predictor_5_face_landmarks.dat"
MODEL_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
FIX = "reinstall it with: pip install --force-reinstall face-recognition-models"


@dataclass(frozen=True, eq=False)
class ShapePredictor:
    """A cascade of regression-tree forests; shapes are P x 2 in the unit square of the face's box."""

    initial: np.ndarray  # P x 2, the mean shape
    split_a: np.ndarray  # C x T x S: the two feature pixels each split compares, and its threshold
    split_b: np.ndarray
    threshold: np.ndarray
    leaves: np.ndarray  # C x T x (S + 1) x P x 2: each leaf's shape update
    anchors: np.ndarray  # C x F: the landmark each feature pixel is placed relative to
    offsets: np.ndarray  # C x F x 2: where, in the mean shape's frame

    def predict(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """The landmarks (P x 2, image pixels) of the face in ``box`` (dlib's rectangle: left, top and
        inclusive right, bottom) of ``image`` (H x W x 3 uint8 RGB or H x W grey)."""
        left, top, right, bottom = box
        origin = np.array([left, top], np.float64)
        size = np.array([right - left, bottom - top], np.float64)
        h, w = image.shape[:2]
        shape = self.initial.astype(np.float64)
        splits = self.split_a.shape[2]
        trees = np.arange(self.split_a.shape[1])
        for c in range(len(self.split_a)):
            m, _ = similarity_transform(self.initial, shape)
            points = origin + size * (shape[self.anchors[c]] + self.offsets[c] @ m.T)
            # dlib rounds to the nearest pixel; outside the image a feature reads 0
            x = np.floor(points[:, 0] + 0.5).astype(np.int64)
            y = np.floor(points[:, 1] + 0.5).astype(np.int64)
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            values = np.zeros(len(points), np.float32)
            values[inside] = _intensity(image[y[inside], x[inside]])
            node = np.zeros(len(trees), np.int64)
            while True:
                open_ = node < splits
                if not open_.any():
                    break
                t, n = trees[open_], node[open_]
                left_branch = values[self.split_a[c, t, n]] - values[self.split_b[c, t, n]] > self.threshold[c, t, n]
                node[open_] = np.where(left_branch, 2 * n + 1, 2 * n + 2)
            shape = shape + self.leaves[c, trees, node - splits].sum(0)
        return origin + size * shape


#: where dlib's HOG detector puts its box for a face, relative to cloakd's dlib chip of that face (the
#: MTCNN-aligned ChipTransform at padding FIT_PADDING): centre offset in the chip's own frame and side,
#: as fractions of the chip's side. Medians over 1,046 faces of ../shared/data/train
#: (bench/fit_template.py --box).
FIT_PADDING = 0.25
HOG_BOX_CENTRE = (-0.039, -0.020)
HOG_BOX_SIDE = 0.905


def hog_like_box(transform: ChipTransform, padding: float = FIT_PADDING) -> tuple[float, float, float, float]:
    """The box dlib's HOG detector would give the face whose chip (dlib's geometry at ``padding``) is
    ``transform``: what the landmark predictor was trained to start from (left, top, inclusive right,
    bottom)."""
    k = (1 + 2 * FIT_PADDING) / (1 + 2 * padding)  # the chip's side at the fitted padding, per side at this one
    n = transform.size - 1  # chip pixels across the chip's rect
    ((cx, cy),) = transform.chip_to_image(n * (0.5 + k * np.array([HOG_BOX_CENTRE])))
    half = HOG_BOX_SIDE * k * (transform.rect[2] - transform.rect[0]) / 2
    return cx - half, cy - half, cx + half, cy + half


def dlib_pipeline_chip(
    predictor: ShapePredictor, image: np.ndarray, transform: ChipTransform, padding: float
) -> ChipTransform:
    """The chip dlib's own pipeline (HOG box, this predictor, get_face_chip with ``padding``) would cut
    for the face whose chip in cloakd's alignment (the same geometry) is ``transform``."""
    points = predictor.predict(image, hog_like_box(transform, padding))
    return ChipTransform.fit(template_in_chip(DLIB_5POINT_TEMPLATE, transform.size, padding), points, transform.size)


def _intensity(pixels: np.ndarray) -> np.ndarray:
    """dlib's get_pixel_intensity: the grey value of an RGB pixel is the integer mean of its channels."""
    if pixels.ndim == 1:
        return pixels.astype(np.float32)
    return (pixels.astype(np.int32).sum(-1) // 3).astype(np.float32)


def load_shape_predictor(path: str | Path | None = None) -> ShapePredictor:
    """Parse dlib's 5-point predictor from ``path`` (default: the file face-recognition-models ships).
    The file must be byte-identical to dlib's release (sha256 checked)."""
    if path is None:
        from ..assets import package_file

        source, fix = package_file(MODEL_PACKAGE, MODEL_FILE), FIX
    else:
        source, fix = Path(path), f"use an unmodified copy of {Path(MODEL_FILE).name}"
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise ModelMissingError(f"cannot read dlib landmark model {source}: {exc.strerror or exc} ({fix})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise ModelCorruptError(
            f"dlib landmark model {source} is not the expected model: sha256 {digest[:16]}... "
            f"({len(data)} bytes), expected {MODEL_SHA256[:16]}...: damaged or replaced ({fix})"
        )
    return _parse(data)


def _parse(data: bytes) -> ShapePredictor:
    """The file's arrays. The digest has already proved the bytes are dlib's file, so the layout is read
    without re-validating each field; a structural surprise still raises ModelCorruptError."""
    r = _Packed(data)
    if r.integer() != 1:
        raise ModelCorruptError("dlib landmark model: unsupported version")
    initial = r.column().reshape(-1, 2)
    points = len(initial)
    forests = _forests(r)
    anchors = [[r.integer() for _ in range(r.integer())] for _ in range(r.integer())]
    offsets = [[(r.floating(), r.floating()) for _ in range(r.integer())] for _ in range(r.integer())]
    if r.pos != len(data):
        raise ModelCorruptError("dlib landmark model: unexpected bytes after the model")
    splits = np.array([[[s for s in tree[0]] for tree in trees] for trees in forests], np.float64)
    leaves = np.array([[tree[1] for tree in trees] for trees in forests], np.float32)
    return ShapePredictor(
        initial=initial.astype(np.float64),
        split_a=splits[..., 0].astype(np.int64),
        split_b=splits[..., 1].astype(np.int64),
        threshold=splits[..., 2].astype(np.float32),
        leaves=leaves.reshape(*leaves.shape[:3], points, 2),
        anchors=np.array(anchors, np.int64),
        offsets=np.array(offsets, np.float64),
    )


def _forests(r: "_Packed") -> list[list[tuple[list, list]]]:
    """The cascades of regression trees: per cascade, per tree, its splits (two pixel indices and a
    threshold) and its leaves."""
    forests = []
    for _ in range(r.integer()):
        trees = []
        for _ in range(r.integer()):
            splits = [(r.integer(), r.integer(), r.floating()) for _ in range(r.integer())]
            leaves = [r.column() for _ in range(r.integer())]
            trees.append((splits, leaves))
        forests.append(trees)
    return forests


class _Packed:
    """dlib's packed integers and floats (the encoding extractors/dlib_dat.py's ``_Reader`` reads),
    without its per-field checks: the sha256 has already proved the bytes, and the parse is dominated by
    the 1.2 million floats of the leaves (this file takes 3.8 s through ``_Reader``, 1.2 s here)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def integer(self) -> int:
        data, pos = self.data, self.pos
        control = data[pos]
        n = control & 0x0F
        value = int.from_bytes(data[pos + 1 : pos + 1 + n], "little")
        self.pos = pos + 1 + n
        return -value if control & 0x80 else value

    def floating(self) -> float:
        mantissa = self.integer()
        return math.ldexp(mantissa, self.integer())

    def column(self) -> np.ndarray:
        rows, cols = -self.integer(), -self.integer()
        if rows < 0 or cols != 1:
            raise ModelCorruptError("dlib landmark model: a shape is not a column matrix")
        return np.array([self.floating() for _ in range(rows)], np.float32)
