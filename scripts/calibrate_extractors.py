"""Measure each extractor's identity scale: the typical distance between two photos of one person and of
two different people, on ../shared/data/train (LFW identities used in no evaluation).

    .venv/bin/python scripts/calibrate_extractors.py                          # ~6 min on one core
    .venv/bin/python scripts/calibrate_extractors.py --extractors facenet    # one extractor alone

The cloak counts every extractor's distances in units of its *identity gap* (median different-person
distance minus median same-person distance), so that a move of one unit means the same in each: a loss
or a verification margin stated once holds for all of them. Prints the medians to put next to each
extractor's ``same_person`` and ``other_person``, and the distance threshold that best tells the same-person
pairs from as many different-person pairs (maximum accuracy, midway between two observed distances): a
candidate ``match_threshold``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def best_threshold(same: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """The threshold maximising the accuracy of "same person iff distance < threshold", and that accuracy."""
    d = np.sort(np.concatenate([same, other]))
    cuts = (d[:-1] + d[1:]) / 2
    correct = np.searchsorted(np.sort(same), cuts) + len(other) - np.searchsorted(np.sort(other), cuts)
    i = int(np.argmax(correct))
    return float(cuts[i]), correct[i] / len(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extractors", metavar="NAMES", help="comma-separated extractors (default: the cloak's)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("CLOAKD_THREADS", "1")))
    from cloakd.core.extractors import load_extractor
    from cloakd.core.faces import FaceAnalyzer, main_face

    if args.extractors:
        chosen = [load_extractor(name) for name in args.extractors.split(",")]
        analyzer = FaceAnalyzer(extractor=chosen[0], cloak_extractors=chosen)
    else:
        analyzer = FaceAnalyzer()
    people = [sorted(p.glob("*.jpg")) for p in sorted((DATA / "train").iterdir()) if p.is_dir()]
    photos = [f for person in people if len(person) >= 2 for f in person]
    descs: dict[str, list[np.ndarray]] = defaultdict(list)
    names = []
    for i, f in enumerate(photos):
        rgb, faces = analyzer.read(f.read_bytes(), str(f))
        face = main_face(faces)
        if face is None:
            continue
        names.append(f.parent.name)
        for k, d in analyzer.describe_face(rgb, face).items():
            descs[k].append(d)
        if i % 500 == 0:
            print(f"{i}/{len(photos)}", file=sys.stderr)
    names = np.array(names)
    groups = defaultdict(list)
    for i, n in enumerate(names):
        groups[n].append(i)
    same_pairs = [(a, b) for g in groups.values() for j, a in enumerate(g) for b in g[j + 1 :]]
    rng = np.random.default_rng(0)
    other_pairs = [(a, b) for a, b in rng.integers(0, len(names), (4 * len(same_pairs), 2)) if names[a] != names[b]]
    print(f"{len(names)} faces, {len(same_pairs)} same-person pairs, {len(other_pairs)} different-person pairs")
    for k, d in descs.items():
        x = np.stack(d)
        same = np.array([np.linalg.norm(x[a] - x[b]) for a, b in same_pairs])
        other = np.array([np.linalg.norm(x[a] - x[b]) for a, b in other_pairs])
        print(
            f"{k}: same_person = {np.median(same):.4f}, other_person = {np.median(other):.4f} "
            f"(identity gap {np.median(other) - np.median(same):.4f})"
        )
        threshold, accuracy = best_threshold(same, other[: len(same)])
        print(
            f"  best threshold {threshold:.4f} (cosine {1 - threshold**2 / 2:.4f}) on the same-person pairs and as "
            f"many different-person pairs: accuracy {accuracy:.4f}; same pairs below it "
            f"{(same < threshold).mean():.4f}, different pairs below it {(other < threshold).mean():.4f}"
        )


if __name__ == "__main__":
    main()
