"""Convert bubbliiiing/arcface-pytorch's MobileFaceNet (ArcFace, CASIA-WebFace; MIT) into cloakd's torch
weights, core/data/arcface_mbf.fp16.pt.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/convert_arcface_mbf.py               # about 1 min of CPU
    OMP_NUM_THREADS=1 .venv/bin/python scripts/convert_arcface_mbf.py --alignments  # plus about 1 min
    OMP_NUM_THREADS=1 .venv/bin/python scripts/convert_arcface_mbf.py --calibrate   # plus about 10 min
    ... --alignments --calibrate                                     # plus about 15 min

1. Check the source's sha256 and load its state dict as published into ``MobileFaceNet(folded=False)``
   (strict: no missing and no unexpected key).
2. Fold every batch norm into its conv (:func:`~cloakd.core.extractors.arcface_mbf.fold`, float64) and
   load the result strictly into ``MobileFaceNet()``; compare both on real chips (the central face of the
   first two photos of each identity of ../shared/data/faces, cloakd's MTCNN + the module's alignment).
3. Write the folded state dict as float16 (``weights.save_state``) and measure what that rounding costs
   against the original float32 network (max abs difference of the unit descriptors, max 1 - cosine).
4. ``--alignments``: leave-one-out 1-NN identification (cosine) on faces/ (the face nearest each photo's
   centre) for each candidate chip geometry of :data:`ALIGNMENTS`; with ``--calibrate`` also their best
   verification accuracy on the train/ pairs below, where the differences show.
5. ``--calibrate``: on ../shared/data/train, the identity scale with scripts/calibrate_extractors.py's
   method (largest face of every photo of the identities with >= 2, its same-person pairs and the same
   random different-person pairs; the medians are ``same_person`` and ``other_person``), and the distance
   threshold maximising same/different accuracy as scripts/convert_sface.py --threshold chooses it (all
   same-person pairs, as many random different-person pairs, seed 0).

The conversion is deterministic; the weights digest printed must equal ``WEIGHTS_DIGEST`` in
core/extractors/arcface_mbf.py.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cloakd.core.align import extract_chip  # noqa: E402
from cloakd.core.detect import FaceDetector  # noqa: E402
from cloakd.core.extractors.arcface_mbf import WEIGHTS, WEIGHTS_DIGEST, MobileFaceNet, fold  # noqa: E402
from cloakd.core.extractors.base import ChipGeometry  # noqa: E402
from cloakd.core.extractors.weights import save_state  # noqa: E402
from cloakd.core.faces import Face, FaceAnalyzer, main_face  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SOURCE = REPO.parent / "shared" / "surrogates" / "arcface-mobilefacenet-casia" / "arcface_mobilefacenet.pth"
SOURCE_SHA256 = "4c08e11a0a2bbf299910210da647c7d8105c348f4c533868e1710dbcf7b22480"

_ARCFACE = np.array(MobileFaceNet.geometry.template)


def _about_centre(scale: float, down: float = 0) -> ChipGeometry:
    """The ArcFace template scaled about the chip centre (> 1: the face fills more of the chip) and moved
    ``down`` chip pixels."""
    return ChipGeometry(size=112, template=tuple(map(tuple, (_ARCFACE - 56) * scale + 56 + (0, down))))


#: candidate chips for --alignments: name -> (geometry, columns to paint grey at each side)
ALIGNMENTS = {
    "ArcFace template (SFace's)": (MobileFaceNet.geometry, 0),
    "ArcFace 96 x 112 letterboxed to 112 (grey sides)": (MobileFaceNet.geometry, 8),
    "ArcFace template x 0.9 (looser)": (_about_centre(0.9), 0),
    "ArcFace template x 0.95": (_about_centre(0.95), 0),
    "ArcFace template x 1.05": (_about_centre(1.05), 0),
    "ArcFace template x 1.1 (tighter)": (_about_centre(1.1), 0),
    "ArcFace template 3 px lower in the chip": (_about_centre(1.0, 3), 0),
    "ArcFace template 3 px higher in the chip": (_about_centre(1.0, -3), 0),
    "dlib's chip (padding 0.25)": (ChipGeometry(size=112, padding=0.25), 0),
}


# --- conversion ---------------------------------------------------------------------------------------------


def load_original(path: Path) -> MobileFaceNet:
    """The published network, its state dict loaded strictly into the original layout."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected bubbliiiing's {SOURCE_SHA256}")
    model = MobileFaceNet(folded=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def folded(original: MobileFaceNet) -> MobileFaceNet:
    model = MobileFaceNet()
    model.load_state_dict(fold(original.state_dict()), strict=True)
    return model.eval()


# --- real chips ---------------------------------------------------------------------------------------------


def central_faces(model: MobileFaceNet, paths: list[Path]) -> tuple[np.ndarray, list[np.ndarray], list[Face]]:
    """(identity names, RGB images, faces) of the face nearest each photo's centre, found by cloakd's MTCNN
    (photos without a face are left out)."""
    analyzer = FaceAnalyzer(FaceDetector(), model, cloak_extractors=[model])
    names, images, faces = [], [], []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        found = analyzer.find(image)
        if found:
            centre = np.array(image.shape[1::-1]) / 2
            names.append(path.parent.name)
            images.append(image)
            faces.append(min(found, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre)))
    return np.array(names), images, faces


def chips(images: list[np.ndarray], faces: list[Face], geometry: ChipGeometry, grey: int = 0) -> np.ndarray:
    """N x S x S x 3 uint8 chips of ``faces`` in ``geometry``; ``grey``: columns painted grey at each side."""
    out = np.stack([extract_chip(image, geometry.transform(face.landmarks)) for image, face in zip(images, faces)])
    if grey:
        out[:, :, :grey] = out[:, :, -grey:] = 128
    return out


def as_input(chips: np.ndarray) -> torch.Tensor:
    """N x S x S x 3 uint8 chips as the extractor's float N x 3 x S x S input."""
    return torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()


@torch.inference_mode()
def describe(model: MobileFaceNet, chips: np.ndarray, batch: int = 32) -> np.ndarray:
    return torch.cat([model(as_input(chips[i : i + batch])) for i in range(0, len(chips), batch)]).numpy()


def compare(name: str, ours: np.ndarray, reference: np.ndarray) -> None:
    print(
        f"  {name}: unit descriptors max abs diff {np.abs(ours - reference).max():.3g}, "
        f"1 - cosine max {(1 - (ours * reference).sum(1)).max():.3g}"
    )


def leave_one_out(names: np.ndarray, descriptors: np.ndarray) -> float:
    """1-NN identification accuracy, each face against all others (cosine)."""
    similarity = descriptors @ descriptors.T
    np.fill_diagonal(similarity, -np.inf)
    return float((names[similarity.argmax(1)] == names).mean())


# --- calibration --------------------------------------------------------------------------------------------


def train_descriptors(model: MobileFaceNet, alignments: dict) -> tuple[np.ndarray, np.ndarray]:
    """(identity names, descriptors N x alignments x 128) of the largest face of every photo of the train/
    identities with >= 2 photos, read as scripts/calibrate_extractors.py reads them, in each alignment."""
    analyzer = FaceAnalyzer(FaceDetector(), model, cloak_extractors=[model])
    people = [sorted(p.glob("*.jpg")) for p in sorted((DATA / "train").iterdir()) if p.is_dir()]
    names, descriptors = [], []
    for path in (f for person in people if len(person) >= 2 for f in person):
        image, faces = analyzer.read(path.read_bytes(), str(path))
        face = main_face(faces)
        if face is not None:
            names.append(path.parent.name)
            views = [chips([image], [face], geometry, grey) for geometry, grey in alignments.values()]
            descriptors.append(describe(model, np.concatenate(views)))
    return np.array(names), np.stack(descriptors)


def train_pairs(names: np.ndarray) -> tuple[list, list, list]:
    """Same-person pairs, scripts/calibrate_extractors.py's different-person pairs (about 4 per same-person
    pair) and scripts/convert_sface.py --threshold's (as many as same-person pairs), both seed 0."""
    groups = defaultdict(list)
    for i, name in enumerate(names):
        groups[name].append(i)
    same = [pair for g in groups.values() for pair in itertools.combinations(g, 2)]
    rng = np.random.default_rng(0)
    other = [(a, b) for a, b in rng.integers(0, len(names), (4 * len(same), 2)) if names[a] != names[b]]
    rng = np.random.default_rng(0)
    balanced: set[tuple[int, int]] = set()
    while len(balanced) < len(same):
        i, j = sorted(rng.choice(len(names), 2, replace=False))
        if names[i] != names[j]:
            balanced.add((int(i), int(j)))
    return same, other, sorted(balanced)


def calibrate(descriptors: np.ndarray, same: list, other: list, balanced: list) -> None:
    d_same, d_other, d_balanced = (distances(descriptors, pairs) for pairs in (same, other, balanced))
    print(
        f"  identity scale on {len(same)} same-person and {len(other)} different-person pairs: same_person, "
        f"other_person = {np.median(d_same):.4f}, {np.median(d_other):.4f} "
        f"(identity gap {np.median(d_other) - np.median(d_same):.4f})"
    )
    threshold, accuracy = best_threshold(d_same, d_balanced)
    print(
        f"  threshold {threshold:.4f} (cosine {1 - threshold**2 / 2:.4f}) maximises accuracy on "
        f"{len(d_same)} + {len(d_balanced)} pairs: {accuracy:.4f}; same pairs below it "
        f"{(d_same < threshold).mean():.4f}, different pairs below it {(d_balanced < threshold).mean():.4f}"
    )
    for t in np.round(threshold + np.arange(-0.1, 0.11, 0.05), 2):
        print(f"  accuracy at {t:.2f}: {((d_same < t).sum() + (d_balanced >= t).sum()) / (2 * len(d_same)):.4f}")


def distances(descriptors: np.ndarray, pairs) -> np.ndarray:
    i, j = np.array(pairs).T
    return np.linalg.norm(descriptors[i] - descriptors[j], axis=1)


def best_threshold(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """The threshold (midway between two observed distances) maximising the accuracy of "same person iff
    distance < threshold", and that accuracy."""
    d = np.sort(np.concatenate([same, different]))
    mids = (d[:-1] + d[1:]) / 2
    correct = np.searchsorted(np.sort(same), mids) + len(different) - np.searchsorted(np.sort(different), mids)
    best = int(np.argmax(correct))
    return float(mids[best]), correct[best] / len(d)


# --- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--output", type=Path, default=WEIGHTS)
    parser.add_argument("--alignments", action="store_true", help="also compare chip geometries on faces/")
    parser.add_argument("--calibrate", action="store_true", help="also measure identity scale and threshold on train/")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("CLOAKD_THREADS", "1")))

    original = load_original(args.source)
    print(f"{args.source.name}: {len(original.state_dict())} tensors loaded strictly (no missing or unexpected key)")
    model = folded(original)
    print(f"folded: {sum(p.numel() for p in model.parameters()):,} parameters")

    photos = sorted((DATA / "faces").glob("*/*.jpg"))
    names, images, faces = central_faces(model, photos)
    first_two = [i for i, name in enumerate(names) if (names[:i] == name).sum() < 2]
    sample = chips([images[i] for i in first_two], [faces[i] for i in first_two], model.geometry)
    reference = describe(original, sample)
    print(f"against the original float32 network on {len(sample)} real chips:")
    compare("folded float32", describe(model, sample), reference)

    digest = save_state(model, args.output)
    shipped = MobileFaceNet()
    shipped.load_state_dict({k: v.float() for k, v in torch.load(args.output, weights_only=True).items()})
    compare("folded float16 (shipped)", describe(shipped.eval(), sample), reference)
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes), weights digest {digest}")
    if digest != WEIGHTS_DIGEST:
        print("  (differs from WEIGHTS_DIGEST in core/extractors/arcface_mbf.py: update it)")

    alignments = ALIGNMENTS if args.alignments else dict(list(ALIGNMENTS.items())[:1])
    if args.alignments:
        print(f"leave-one-out 1-NN on faces/ ({len(names)} faces of {len(set(names))} identities):")
        for label, (geometry, grey) in alignments.items():
            print(f"  {label}: {leave_one_out(names, describe(shipped, chips(images, faces, geometry, grey))):.4f}")
    if args.calibrate:
        train_names, descriptors = train_descriptors(shipped, alignments)
        same, other, balanced = train_pairs(train_names)
        print(f"train: {len(train_names)} faces of {len(set(train_names))} identities")
        calibrate(descriptors[:, 0], same, other, balanced)
        for i, label in enumerate(alignments if args.alignments else ()):
            d_same, d_balanced = distances(descriptors[:, i], same), distances(descriptors[:, i], balanced)
            print(f"  {label}: best verification accuracy {best_threshold(d_same, d_balanced)[1]:.4f}")


if __name__ == "__main__":
    main()
