"""Which crop suits FaceNet: leave-one-out 1-NN identification (cosine) on ../shared/data/faces per crop.

    OMP_NUM_THREADS=1 .venv/bin/python bench/facenet_crops.py     # about 5 minutes on one core

Every photo's face nearest the centre, found by cloakd's MTCNN, cropped in several ways:

* ``stretched``: facenet-pytorch's own crop: the MTCNN box plus a margin given in output pixels (the box
  spans 160 - margin of the 160 pixels along each axis), clipped to the photo, rounded down, resized to
  160 x 160 with PIL's bilinear filter (not square: the face is stretched to the box's aspect);
* ``square-max``, ``square-mean``: the same margin around a square of the box's larger or mean side about
  the box's centre, sampled by cloakd's own chip sampler (a :class:`ChipTransform`, as the cloak renders it);
* ``template``: a 5-landmark similarity alignment (cloakd's ``ChipGeometry(template=...)``) with the template
  fitted so that it matches ``square-mean`` (margin 44) on average: the per-point median of MTCNN's landmarks
  in that crop, over every 6th photo of ../shared/data/train (identities of no evaluation).

It also prints how far the crops of one face are apart in FaceNet's space from facenet-pytorch's own crop
and from each other, and identification across them (gallery in one crop, probes in another): what a
tracker cropping differently would see.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import DATA  # noqa: E402

SIZE = 160


def central_faces(paths: list[Path], detector):
    """(label, image, box, landmarks) of the face nearest each photo's centre (photos without one skipped)."""
    rows = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        dets = detector.detect(image)
        if not len(dets):
            continue
        centre = np.array(image.shape[1::-1]) / 2
        k = int(np.argmin(np.linalg.norm((dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2 - centre, axis=1)))
        rows.append((path.parent.name, image, dets.boxes[k].astype(np.float64), dets.landmarks[k].astype(np.float64)))
    return rows


def stretched(image: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """facenet-pytorch's extract_face: per-axis margin in output pixels, clipped, int, bilinear resize."""
    w, h = box[2] - box[0], box[3] - box[1]
    mx, my = margin * w / (SIZE - margin), margin * h / (SIZE - margin)
    crop = (
        int(max(box[0] - mx / 2, 0)),
        int(max(box[1] - my / 2, 0)),
        int(min(box[2] + mx / 2, image.shape[1])),
        int(min(box[3] + my / 2, image.shape[0])),
    )
    return np.asarray(Image.fromarray(image).crop(crop).resize((SIZE, SIZE), Image.BILINEAR))


def square_transform(box: np.ndarray, margin: float, side: str):
    """cloakd's box geometry (the box's mean side) or the same about a square of the box's larger side."""
    from cloakd.core.align import ChipTransform

    if side == "max":
        centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]).max() / 2
        box = np.concatenate([centre - half, centre + half])
    return ChipTransform.around_box(box, SIZE, margin)


def fit_template(rows, margin: float, side: str) -> np.ndarray:
    """Median position (chip pixels) of the 5 landmarks in the square box crop."""
    return np.median(np.stack([square_transform(b, margin, side).image_to_chip(lm) for _, _, b, lm in rows]), axis=0)


def loo(labels: np.ndarray, desc: np.ndarray, probe: np.ndarray | None = None) -> float:
    sim = (desc if probe is None else probe) @ desc.T
    np.fill_diagonal(sim, -np.inf)
    return float((labels[sim.argmax(1)] == labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--margins", default="32,44")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("CLOAKD_THREADS", "1")))
    from cloakd.core.align import extract_chip
    from cloakd.core.detect import FaceDetector
    from cloakd.core.extractors import ChipGeometry, load_extractor

    model = load_extractor("facenet")
    detector = FaceDetector()

    @torch.inference_mode()
    def describe(chips: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()
        return torch.cat([model(x[i : i + 16]) for i in range(0, len(x), 16)]).numpy()

    faces = central_faces(sorted((DATA / "faces").glob("*/*.jpg")), detector)
    labels = np.array([f[0] for f in faces])
    boxes = np.stack([f[2] for f in faces])
    aspect = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
    print(
        f"faces/: {len(faces)} faces of {len(set(labels))} identities; MTCNN box height / width: median "
        f"{np.median(aspect):.3f}, 5-95% {np.percentile(aspect, 5):.3f}-{np.percentile(aspect, 95):.3f}"
    )
    train = central_faces(sorted((DATA / "train").glob("*/*.jpg"))[::6], detector)
    print(f"template fitted on {len(train)} faces of train/", file=sys.stderr)

    results = {}
    for margin in (float(m) for m in args.margins.split(",")):
        results[f"stretched, margin {margin:g}"] = describe([stretched(im, b, margin) for _, im, b, _ in faces])
        for side in ("max", "mean"):
            chips = [extract_chip(im, square_transform(b, margin, side)) for _, im, b, _ in faces]
            results[f"square-{side}, margin {margin:g}"] = describe(chips)
        template = fit_template(train, margin, "mean")
        geometry = ChipGeometry(size=SIZE, template=tuple(map(tuple, np.round(template, 2))))
        print(f"template fitted to square-mean, margin {margin:g}: {np.round(template, 2).tolist()}")
        results[f"template, margin {margin:g}"] = describe(
            [extract_chip(im, geometry.transform(lm)) for _, im, _, lm in faces]
        )
    print("| crop | leave-one-out 1-NN |")
    print("| --- | --- |")
    for name, desc in results.items():
        print(f"| {name} | {loo(labels, desc):.4f} |")
    for margin in (float(m) for m in args.margins.split(",")):
        real = results[f"stretched, margin {margin:g}"]  # what facenet-pytorch's own pipeline would describe
        for name in (
            f"square-max, margin {margin:g}",
            f"square-mean, margin {margin:g}",
            f"template, margin {margin:g}",
        ):
            gap = np.linalg.norm(results[name] - real, axis=1)
            print(
                f"{name} vs stretched (facenet-pytorch) of the same face: distance median {np.median(gap):.3f}, "
                f"90% {np.percentile(gap, 90):.3f}; 1-NN of stretched probes in a gallery of these "
                f"{loo(labels, results[name], real):.4f}, the reverse {loo(labels, real, results[name]):.4f}"
            )
        box, tpl = results[f"square-mean, margin {margin:g}"], results[f"template, margin {margin:g}"]
        gap = np.linalg.norm(box - tpl, axis=1)
        print(
            f"margin {margin:g}: square-mean vs template of the same face: distance median {np.median(gap):.3f}, "
            f"90% {np.percentile(gap, 90):.3f}; 1-NN of template probes in a square-mean gallery "
            f"{loo(labels, box, tpl):.4f}"
        )
    print(f"(FaceNet's identity gap: {model.identity_gap:.3f})")


if __name__ == "__main__":
    main()
