"""Calibrate extractors: measure each one's identity scale and best same-person threshold on
../shared/data/train (LFW identities used in no evaluation), write them to core/data/calibration.json, and
describe the target bank's photos (../shared/data/targets) in its space, into core/data/target_bank.npz.

    .venv/bin/python scripts/calibrate_extractors.py --extractors facenet     # one extractor (~15 min)
    .venv/bin/python scripts/calibrate_extractors.py                          # every extractor of the table
    .venv/bin/python scripts/calibrate_extractors.py --dry-run                # measure and print only

Adding an extractor is its module (and its line in core/extractors/__init__.py), its weights, and this one
run. The cloak counts every extractor's distances in units of its *identity gap* (median different-person
distance minus median same-person distance), so that a move of one unit means the same in each: a loss
or a verification margin stated once holds for all of them. The threshold is the distance that best tells
the same-person pairs from as many different-person pairs (maximum accuracy, midway between two observed
distances). The bank's primary descriptors are described again and must equal the shipped ones to 1e-3 per
component (other thread counts and CPUs differ by about 1e-4), and the shipped ones are kept (so every stored
target class stays where it was); only the calibrated extractors' spaces are replaced.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from cloakd.core.extractors.calibration import Calibration  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def best_threshold(same: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """The threshold maximising the accuracy of "same person iff distance < threshold", and that accuracy."""
    d = np.sort(np.concatenate([same, other]))
    cuts = (d[:-1] + d[1:]) / 2
    correct = np.searchsorted(np.sort(same), cuts) + len(other) - np.searchsorted(np.sort(other), cuts)
    i = int(np.argmax(correct))
    return float(cuts[i]), correct[i] / len(d)


def measure(analyzer, photos: list[Path]) -> dict[str, Calibration]:
    """Each of the analyser's cloak extractors' calibration on ``photos`` (the largest face of each)."""
    from cloakd.core.faces import main_face

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
    out = {}
    for k, d in descs.items():
        x = np.stack(d)
        same = np.array([np.linalg.norm(x[a] - x[b]) for a, b in same_pairs])
        other = np.array([np.linalg.norm(x[a] - x[b]) for a, b in other_pairs])
        threshold, accuracy = best_threshold(same, other[: len(same)])
        out[k] = Calibration(float(np.median(same)), float(np.median(other)), threshold)
        print(
            f"{k}: same_person = {np.median(same):.4f}, other_person = {np.median(other):.4f} "
            f"(identity gap {np.median(other) - np.median(same):.4f}); best threshold {threshold:.4f} "
            f"(cosine {1 - threshold**2 / 2:.4f}): accuracy {accuracy:.4f}, same pairs below it "
            f"{(same < threshold).mean():.4f}, different pairs below it {(other < threshold).mean():.4f}"
        )
    return out


def describe_bank(analyzer, names: list[str]) -> None:
    """Describe ../shared/data/targets in the spaces of ``names`` and put them into the shipped bank,
    after checking that the primary descriptors come out as they were."""
    from cloakd.core.targets import DEFAULT_BANK, TargetBank, build_bank

    shipped = TargetBank.load()
    fresh = build_bank(analyzer, DATA / "targets", on_skip=lambda why: print(why, file=sys.stderr))
    same = fresh.names == shipped.names and all(
        a.shape == b.shape and np.allclose(a, b, atol=1e-3) for a, b in zip(fresh.descriptors, shipped.descriptors)
    )
    if not same:
        sys.exit(
            "the bank's primary descriptors came out differently: the bank was built from other photos or "
            "by another version; rebuild it whole with 'cloakd targets build' and choose target classes anew"
        )
    spaces = dict(shipped.spaces)
    spaces.update({k: v for k, v in fresh.spaces.items() if k in names})
    DEFAULT_BANK.write_bytes(TargetBank(shipped.names, shipped.descriptors, shipped.extractor, spaces).to_bytes())
    print(f"{DEFAULT_BANK}: spaces {', '.join(sorted(spaces))}; digest {shipped.digest()} unchanged")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extractors", metavar="NAMES", help="comma-separated extractors (default: every one)")
    ap.add_argument("--dry-run", action="store_true", help="measure and print; write nothing")
    ap.add_argument("--no-bank", action="store_true", help="do not describe the target bank's photos")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("CLOAKD_THREADS", "1")))
    from cloakd.core.extractors import DEFAULT_EXTRACTOR, FACTORIES, load_extractor
    from cloakd.core.extractors.calibration import write_calibration
    from cloakd.core.faces import FaceAnalyzer

    names = args.extractors.split(",") if args.extractors else list(FACTORIES)
    unknown = [n for n in names if n not in FACTORIES]
    if unknown:
        sys.exit(f"unknown extractors: {', '.join(unknown)} (known: {', '.join(FACTORIES)})")
    primary = load_extractor(DEFAULT_EXTRACTOR)
    analyzer = FaceAnalyzer(
        extractor=primary, cloak_extractors=[primary] + [load_extractor(n) for n in names if n != DEFAULT_EXTRACTOR]
    )
    people = [sorted(p.glob("*.jpg")) for p in sorted((DATA / "train").iterdir()) if p.is_dir()]
    measured = measure(analyzer, [f for person in people if len(person) >= 2 for f in person])
    if args.dry_run:
        return
    about = {
        "data": "../shared/data/train: the largest face of each photo of the identities with at least 2 "
        "photos; every same-person pair and 4 times as many random different-person pairs (seed 0)"
    }
    write_calibration({k: v for k, v in measured.items() if k in names}, about)
    if not args.no_bank:
        describe_bank(analyzer, [n for n in names if n != DEFAULT_EXTRACTOR])


if __name__ == "__main__":
    main()
