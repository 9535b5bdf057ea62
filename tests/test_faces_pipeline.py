"""The whole pipeline (MTCNN -> alignment -> dlib ResNet) on real photos: identification quality and
agreement with dlib's own pipeline (HOG detector + 5-point predictor + get_face_chip)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def test_leave_one_out_nearest_centroid_identification(lfw_descriptors):
    names, _, x = lfw_descriptors
    assert len(x) == 480
    correct = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        labels = np.unique(names[keep])
        cents = np.stack([x[keep & (names == n)].mean(0) for n in labels])
        correct += labels[np.linalg.norm(cents - x[i], axis=1).argmin()] == names[i]
    accuracy = correct / len(x)
    print(f"leave-one-out nearest-centroid accuracy: {accuracy:.4f}")
    assert accuracy >= 0.97


@pytest.mark.slow
def test_descriptors_close_to_dlibs_own_pipeline(lfw_descriptors, dlib_oracle):
    names, paths, x = lfw_descriptors
    dists = []
    for path, ours in list(zip(paths, x))[::3]:  # 160 photos, every identity
        img = np.array(Image.open(path).convert("RGB"))
        dets = dlib_oracle["detector"](img, 1)
        if not dets:
            continue
        det = max(dets, key=lambda r: r.area())
        ref = np.array(dlib_oracle["resnet"].compute_face_descriptor(img, dlib_oracle["predictor"](img, det)))
        dists.append(np.linalg.norm(ours - ref))
    dists = np.array(dists)
    print(f"L2 to dlib's pipeline over {len(dists)} photos: median {np.median(dists):.4f}, mean {dists.mean():.4f}")
    assert len(dists) >= 150
    assert np.median(dists) <= 0.15


def test_faces_are_aligned_like_dlib(analyzer, dlib_oracle, data_dir):
    """Our chip geometry from MTCNN points lands within a few pixels of dlib's own chip for the same face."""
    from cloakd.core import align

    offsets = []
    for path in sorted((data_dir / "faces").glob("*/*_0002.jpg"))[:20]:
        img = np.array(Image.open(path).convert("RGB"))
        dets = dlib_oracle["detector"](img, 1)
        if not dets:
            continue
        shape = dlib_oracle["predictor"](img, max(dets, key=lambda r: r.area()))
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
        theirs = align.ChipTransform.fit(align.template_in_chip(align.DLIB_5POINT_TEMPLATE, 150, 0.25), pts, 150)
        ours = min(analyzer.find(img), key=lambda f: np.linalg.norm(f.transform.centre - theirs.centre)).transform
        offsets.append(np.abs(ours.footprint() - theirs.footprint()).max() / theirs.scale)  # in chip pixels
    assert len(offsets) >= 18
    assert np.median(offsets) < 6.0
