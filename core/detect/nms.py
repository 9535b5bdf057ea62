"""Greedy non-maximum suppression on axis-aligned boxes (NumPy; torchvision cannot be imported here).

Boxes are (x1, y1, x2, y2) in continuous coordinates, so a box's area is (x2 - x1) * (y2 - y1).
Two overlap measures are offered because MTCNN uses both: "union" (IoU) between its stages, and "min"
(intersection over the smaller box) at the end, which also removes a small box lying inside a larger one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Overlap = Literal["union", "min"]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: Overlap = "union") -> np.ndarray:
    """Indices of the boxes kept, best score first.

    A box is dropped when its overlap with an already kept, higher-scoring box exceeds ``threshold``.
    Greedy NMS is sequential, but finding which boxes overlap is not: a sort-and-sweep on x lists the
    intersecting pairs in NumPy, so the Python walk only reads precomputed neighbour lists. This keeps the
    thousands of PNet windows of a textured 12-megapixel photo cheap, where one NumPy pass per kept box,
    or a full N x N overlap matrix, costs many times more (bench/faces.py times detection).
    """
    n = len(boxes)
    order = np.argsort(-np.asarray(scores), kind="stable")
    ranked = np.asarray(boxes, dtype=np.float64).reshape(n, 4)[order]
    first, second = _x_intersecting_pairs(ranked)
    hits = _overlap(ranked[first], ranked[second], overlap) > threshold
    # In each overlapping pair the better-ranked box may suppress the other: neighbour lists by rank.
    better = np.minimum(first[hits], second[hits])
    worse = np.maximum(first[hits], second[hits])
    by_better = np.argsort(better, kind="stable")
    better, worse = better[by_better], worse[by_better]
    bounds = np.searchsorted(better, np.arange(n + 1)).tolist()
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for rank in range(n):
        if not suppressed[rank]:
            keep.append(rank)
            suppressed[worse[bounds[rank] : bounds[rank + 1]]] = True
    return order[np.asarray(keep, dtype=np.int64)]


def _x_intersecting_pairs(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), each once, whose x-intervals intersect: the only pairs that can overlap at all."""
    n = len(boxes)
    by_x1 = np.argsort(boxes[:, 0], kind="stable")
    x1 = boxes[by_x1, 0]
    # In x1 order, box p meets exactly the later boxes q with x1[q] < x2[p]: a contiguous run after p.
    ends = np.searchsorted(x1, boxes[by_x1, 2], side="left")
    counts = np.maximum(ends - np.arange(n) - 1, 0)
    p = np.repeat(np.arange(n), counts)
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    q = p + 1 + np.arange(len(p)) - run_start
    return by_x1[p], by_x1[q]


def _overlap(a: np.ndarray, b: np.ndarray, overlap: Overlap) -> np.ndarray:
    """Row-wise overlap of ``a[k]`` and ``b[k]``: IoU ("union") or intersection / smaller area ("min")."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    denom = np.minimum(area_a, area_b) if overlap == "min" else area_a + area_b - inter
    return np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)
