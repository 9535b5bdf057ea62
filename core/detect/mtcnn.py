"""MTCNN face detection: the three-stage cascade of Zhang et al. (2016) with facenet-pytorch's weights.

Stages: PNet scans an image pyramid and proposes windows; RNet re-scores 24x24 crops of them; ONet
re-scores 48x48 crops and places five landmarks. Between stages boxes are corrected by each net's
regression, made square and thinned by non-maximum suppression.

Large photos are handled in two resolutions so that a 12-megapixel photo costs about as much as a
1-megapixel one:
- PNet and RNet run on a *working copy* whose longer side is at most ``max_side``. On such photos the
  smallest face searched is therefore ``min_face_size`` pixels of the working copy, i.e. a fixed fraction of
  the photo size, which is what matters for a face being recognisable at all.
- ONet's crops are cut from the full-resolution image, so landmarks are as precise as the photo allows.

All resampling is area averaging (PIL's BOX filter on uint8), as in the original MTCNN. Crops reaching past
the image border are zero-filled (the original's behaviour; facenet-pytorch clips them instead, which
stretches faces at the border).

Coordinates are continuous pixel coordinates: pixel (column i, row j) covers [i, i+1) x [j, j+1). In this
frame the landmarks are numerically the same as facenet-pytorch's; its boxes are the same but with x1 and y1
one larger (it keeps MATLAB's 1-based box corner).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import CloakdError, ImageError
from .mtcnn_nets import ONet, PNet, RNet, normalise
from .nms import nms

#: PNet looks at 12x12 windows with a stride of 2 pixels (its output grid).
_CELL, _STRIDE = 12, 2
#: NMS IoU thresholds: within one pyramid level, across levels, after RNet; ONet's uses intersection/min.
_NMS_LEVEL, _NMS_PYRAMID, _NMS_RNET, _NMS_ONET = 0.5, 0.7, 0.7, 0.7
#: Crops per RNet/ONet forward pass. Small chunks keep activations in cache; one pass over a thousand crops
#: allocates far more memory and runs slower on CPU (bench/faces.py times detection).
_CHUNK = 64


@dataclass
class Detections:
    """Faces found in one image, best score first.

    ``boxes``: (N, 4) float32 x1, y1, x2, y2 in pixels of the image given (may reach past its border for
    faces cut by the frame). ``scores``: (N,) float32 ONet face probability. ``landmarks``: (N, 5, 2) float32
    (x, y) of image-left eye, image-right eye, nose tip, image-left and image-right mouth corner.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        """No faces (arrays of length 0 with the usual trailing shapes)."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


class FaceDetector:
    """MTCNN face detector.

    ``min_face_size``: smallest face side searched, in pixels of the image, or of the working copy when the
    image's longer side exceeds ``max_side`` (then the limit is ``min_face_size * longer_side / max_side``
    image pixels; ``max_side=None`` always searches the full resolution, which is slow on large photos).
    ``thresholds``: face-probability cut-offs of PNet, RNet and ONet. ``factor``: scale step of the
    pyramid. ``weights_dir``: folder holding pnet.pt, rnet.pt and onet.pt (default: the installed
    facenet-pytorch).
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_side: int | None = 1280,
        weights_dir: str | Path | None = None,
    ) -> None:
        if min_face_size < 1:
            raise CloakdError(f"min_face_size must be at least 1 pixel, got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= t < 1.0 for t in thresholds):
            raise CloakdError(f"thresholds must be three probabilities in [0, 1), got {thresholds!r}")
        if not 0.0 < factor < 1.0:
            raise CloakdError(f"pyramid factor must be in (0, 1), got {factor}")
        if max_side is not None and max_side < _CELL:
            raise CloakdError(f"max_side must be at least {_CELL} pixels or None, got {max_side}")
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.max_side = max_side
        weights = None if weights_dir is None else Path(weights_dir)
        self.pnet = PNet.load(weights)
        self.rnet = RNet.load(weights)
        self.onet = ONet.load(weights)

    def detect(self, image: np.ndarray) -> Detections:
        """Find faces in an H x W x 3 uint8 RGB image (H x W greyscale is accepted too)."""
        rgb = _as_rgb(image)
        if min(rgb.shape[:2]) < _CELL:  # smaller than PNet's window: nothing can be found
            return Detections.empty()
        full = Image.fromarray(rgb)
        work = _working_copy(full, self.max_side)
        with torch.inference_mode():
            boxes = self._propose(work)
            if len(boxes):
                boxes = self._refine(work, boxes)
            if not len(boxes):
                return Detections.empty()
            to_full = np.array([full.width / work.width, full.height / work.height] * 2)
            return self._output(full, _square(boxes * to_full))

    def _propose(self, work: Image.Image) -> np.ndarray:
        """PNet over the pyramid: regressed, squared candidate boxes in working-copy pixels."""
        found = []
        for level in _pyramid(work.size, self.min_face_size, self.factor):
            pixels = np.array(work.resize(level, Image.BOX))  # a writable copy, as torch wants
            batch = normalise(torch.from_numpy(pixels).permute(2, 0, 1)[None].float())
            reg, prob = self.pnet(batch.contiguous(memory_format=torch.channels_last))
            cells = _pnet_cells(prob[0].numpy(), reg[0].numpy(), self.thresholds[0])
            if len(cells):
                cells[:, :4] /= np.array([level[0] / work.width, level[1] / work.height] * 2)
                found.append(cells[nms(cells[:, :4], cells[:, 4], _NMS_LEVEL)])
        if not found:
            return np.zeros((0, 4))
        cells = np.concatenate(found)
        cells = cells[nms(cells[:, :4], cells[:, 4], _NMS_PYRAMID)]
        return _square(_regress(cells[:, :4], cells[:, 5:9]))

    def _refine(self, work: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """RNet on 24x24 crops of the working copy: surviving boxes, regressed, in working-copy pixels."""
        crops, boxes = _crops(work, boxes, 24)
        reg, prob = _run_chunked(self.rnet, crops)
        keep = (prob > self.thresholds[1]).numpy()
        boxes, reg, prob = boxes[keep], reg.numpy()[keep], prob.numpy()[keep]
        keep = nms(boxes, prob, _NMS_RNET)
        return _regress(boxes[keep], reg[keep])

    def _output(self, full: Image.Image, boxes: np.ndarray) -> Detections:
        """ONet on 48x48 crops of the full-resolution image: final boxes, scores and landmarks."""
        crops, boxes = _crops(full, boxes, 48)
        reg, marks, prob = (t.numpy() for t in _run_chunked(self.onet, crops))
        keep = prob > self.thresholds[2]
        boxes, reg, marks, prob = boxes[keep], reg[keep], marks[keep], prob[keep]
        size = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
        landmarks = boxes[:, None, :2] + size * np.stack([marks[:, :5], marks[:, 5:]], axis=2)
        boxes = _regress(boxes, reg)
        keep = nms(boxes, prob, _NMS_ONET, overlap="min")
        return Detections(
            boxes[keep].astype(np.float32), prob[keep].astype(np.float32), landmarks[keep].astype(np.float32)
        )


def _run_chunked(net: torch.nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``net(crops)`` evaluated in chunks of ``_CHUNK``, channels-last (oneDNN's fast layout on CPU)."""
    outs = [
        net(crops[i : i + _CHUNK].contiguous(memory_format=torch.channels_last)) for i in range(0, len(crops), _CHUNK)
    ]
    return tuple(torch.cat(parts) for parts in zip(*outs))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Validate the input and return it as a C-contiguous H x W x 3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError(f"face detection needs a uint8 RGB array, got {kind}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"face detection needs an H x W x 3 RGB or H x W grey array, not {image.shape}")
    return np.ascontiguousarray(image)


def _working_copy(full: Image.Image, max_side: int | None) -> Image.Image:
    """The image, area-downscaled so its longer side is at most ``max_side``."""
    longer = max(full.size)
    if max_side is None or longer <= max_side:
        return full
    s = max_side / longer
    size = (max(_CELL, round(full.width * s)), max(_CELL, round(full.height * s)))
    return full.resize(size, Image.BOX)


def _pyramid(size: tuple[int, int], min_face: float, factor: float) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level; level k maps a min_face / factor**k pixel face to PNet's 12."""
    width, height = size
    levels = []
    scale = _CELL / min_face
    while min(width, height) * scale >= _CELL:
        levels.append((max(_CELL, int(np.ceil(width * scale))), max(_CELL, int(np.ceil(height * scale)))))
        scale *= factor
    return levels


def _pnet_cells(prob: np.ndarray, reg: np.ndarray, threshold: float) -> np.ndarray:
    """Rows (x1, y1, x2, y2, score, dx1, dy1, dx2, dy2) for output cells above threshold, in level pixels."""
    rows, cols = np.nonzero(prob > threshold)
    x1, y1 = cols * _STRIDE, rows * _STRIDE
    return np.column_stack([x1, y1, x1 + _CELL, y1 + _CELL, prob[rows, cols], reg[:, rows, cols].T]).astype(np.float64)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply MTCNN's box regression: each corner moves by its offset times the box width/height."""
    size = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
    return boxes + reg * size


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square on its longer side, keeping its centre (the nets expect square crops)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) / 2
    return np.hstack([centre - half, centre + half])


def _crops(image: Image.Image, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised size x size crops (N x 3 x size x size) and the integer boxes they were cut from.

    Boxes are rounded to whole pixels so that the nets' relative outputs refer to exactly the pixels they
    saw; parts outside the image are black (PIL's crop zero-fills). Boxes inside the image are resampled in
    place, without copying the region first.
    """
    ints = np.rint(boxes).astype(np.int64)
    ints[:, 2:] = np.maximum(ints[:, 2:], ints[:, :2] + 1)
    pixels = np.stack([_crop(image, box, size) for box in map(tuple, ints.tolist())])
    return normalise(torch.from_numpy(pixels).permute(0, 3, 1, 2).float()), ints.astype(np.float64)


def _crop(image: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """One size x size x 3 crop: resampled in place if inside the image, else cut out (zero-filled) first."""
    if box[0] >= 0 and box[1] >= 0 and box[2] <= image.width and box[3] <= image.height:
        return np.asarray(image.resize((size, size), Image.BOX, box=box))
    return np.asarray(image.crop(box).resize((size, size), Image.BOX))
