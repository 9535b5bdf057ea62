"""The plausibility check (core/plausible.py) measured: detections before it (MTCNN alone) and faces after.

Every photo of ../shared/data metadata/, groups/ and faces/ is decoded as cloakd decodes it and run through
``FaceAnalyzer.find`` (every detection: "before") and ``FaceAnalyzer.examine`` (those that count as faces:
"after"). What is a real face:
- groups/: the counts of groups_face_counts.json; the dlib photos' hand-labelled boxes from the same file,
  the other two photos' faces checked by eye (REAL_BY_EYE: every detection of MTCNN there is a face);
- metadata/: the faces of canon-ixus.jpg (three people facing the camera; the fourth detection there is the
  ear of a man seen from behind) and sony-cybershot.jpg, checked by eye (REAL_BY_EYE); no other photo of the
  folder shows a face (a dog, flowers, landscapes, objects);
- faces/: the LFW identity's face, the detection nearest the centre of the 250x250 photo (within 60 px);
  other detections are people at the edges, often cut by the frame or a black wedge: counted, not judged.

A detection matches a labelled face when each one's centre lies inside the other's box. Prints a markdown
table per folder and the rejected detections with their reasons. Usage: .venv/bin/python bench/plausible.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see daemon/cli/__init__.py)

import datetime
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cloakd.core.extractors import load_extractor
from cloakd.core.faces import FaceAnalyzer
from cloakd.core.photo.decode import decode
from cloakd.core.plausible import MAX_NORM, TARGET_MAX_NORM, TARGET_MIN_SCORE
from common import DATA, machine

#: faces checked by eye where no labels exist: file -> boxes x1, y1, x2, y2 (MTCNN's, rounded)
REAL_BY_EYE = {
    "metadata/canon-ixus.jpg": [[336, 222, 359, 253], [301, 211, 326, 243], [256, 199, 281, 233]],
    "metadata/sony-cybershot.jpg": [[108, 83, 143, 126]],
    "groups/deepface_selfie-many-people.jpg": [
        [346, 112, 484, 291],
        [84, 288, 203, 449],
        [210, 124, 309, 254],
        [-6, 244, 72, 353],
        [519, 69, 614, 209],
    ],
    "groups/facenet-pytorch_multiface.jpg": [
        [858, 437, 950, 559],
        [419, 131, 502, 240],
        [550, 47, 629, 156],
        [227, 247, 306, 357],
        [726, 469, 797, 574],
        [622, 195, 696, 298],
    ],
}


@dataclass
class Tally:
    photos: int = 0
    with_face: list[int] = field(default_factory=lambda: [0, 0])  # photos with at least one face
    detections: list[int] = field(default_factory=lambda: [0, 0])  # before, after
    false: list[int] = field(default_factory=lambda: [0, 0])
    found: list[int] = field(default_factory=lambda: [0, 0])  # labelled faces matched
    labelled: int = 0
    target_fit: int = 0  # faces after that clear the stricter bar for choosing a target
    identities: list[set] = field(default_factory=lambda: [set(), set()])  # faces/: identities all 12 found


def _centre(box) -> np.ndarray:
    return (np.asarray(box[:2], float) + np.asarray(box[2:], float)) / 2


def _inside(point: np.ndarray, box) -> bool:
    return bool(box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3])


def _matches(det, label) -> bool:
    return _inside(_centre(det), label) and _inside(_centre(label), det)


def labels(rel: str, counts: dict) -> list[list[float]] | None:
    """The labelled real faces of a photo (x1, y1, x2, y2), [] for none, None when unknown (faces/)."""
    if rel in REAL_BY_EYE:
        return REAL_BY_EYE[rel]
    name = Path(rel).name
    if rel.startswith("groups/"):
        return [[x, y, x + w, y + h] for y, x, w, h in counts[name]["boxes_top_left_width_height"]]
    return [] if rel.startswith("metadata/") else None


def judge(tally: Tally, k: int, boxes: list, truth: list | None) -> None:
    """Count detections ``boxes`` (column ``k``: 0 before, 1 after) against the labelled faces."""
    tally.detections[k] += len(boxes)
    if truth is None:
        return
    tally.found[k] += sum(any(_matches(b, t) for b in boxes) for t in truth)
    tally.false[k] += sum(not any(_matches(b, t) for t in truth) for b in boxes)


def central(boxes: list, shape) -> bool:
    centre = np.array([shape[1], shape[0]]) / 2
    return any(np.linalg.norm(_centre(b) - centre) < 60 for b in boxes)


def run() -> tuple[dict[str, Tally], list[str], dict]:
    torch.set_num_threads(1)
    primary = load_extractor("dlib_resnet")
    analyzer = FaceAnalyzer(extractor=primary, cloak_extractors=[primary])
    counts = json.loads((DATA / "groups_face_counts.json").read_text())
    tallies, rejected, per_photo = {}, [], {}
    lfw: dict[str, list[bool]] = {}
    for folder in ("metadata", "groups", "faces"):
        tally = tallies[folder] = Tally()
        for path in sorted(p for p in (DATA / folder).rglob("*") if p.is_file() and p.suffix.lower() != ".md"):
            rel = str(path.relative_to(DATA))
            rgb = decode(path.read_bytes(), label=rel).rgb
            before = [f.box.tolist() for f in analyzer.find(rgb)]
            faces, doubts = analyzer.examine(rgb)
            after = [f.box.tolist() for f in faces]
            tally.photos += 1
            tally.with_face[0] += bool(before)
            tally.with_face[1] += bool(after)
            truth = labels(rel, counts)
            # groups/: recall against the counted faces (the selfie's two faces cut by the frame have no box)
            tally.labelled += counts[path.name]["faces"] if folder == "groups" else len(truth or [])
            judge(tally, 0, before, truth)
            judge(tally, 1, after, truth)
            tally.target_fit += sum(f.fit_for_target for f in faces)
            rejected += [f"{rel}: score {d.score:.3f}, {d.reason}" for d in doubts]
            per_photo[rel] = (len(before), len(after))
            if folder == "faces":
                lfw.setdefault(path.parent.name, [True, True])
                seen = lfw[path.parent.name]
                seen[0] &= central(before, rgb.shape)
                seen[1] &= central(after, rgb.shape)
                tally.found[0] += central(before, rgb.shape)
                tally.found[1] += central(after, rgb.shape)
                tally.labelled += 1
    for name, seen in lfw.items():
        for k in (0, 1):
            if seen[k]:
                tallies["faces"].identities[k].add(name)
    return tallies, rejected, per_photo


def table(tallies: dict[str, Tally]) -> str:
    rows = [
        "| folder | photos | photos with a face, before / after | detections before / after | false faces before / "
        "after | real faces found before / after, of (recall after) | faces fit to choose a target from |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for folder, t in tallies.items():
        false = "not judged" if folder == "faces" else f"{t.false[0]} / {t.false[1]}"
        found = f"{t.found[0]} / {t.found[1]}, of {t.labelled} ({t.found[1] / t.labelled:.3f})"
        if folder == "faces":
            found += f"; identities with all 12: {len(t.identities[0])} / {len(t.identities[1])} of 40"
        rows.append(
            f"| {folder}/ | {t.photos} | {t.with_face[0]} / {t.with_face[1]} | {t.detections[0]} / {t.detections[1]} "
            f"| {false} | {found} | {t.target_fit} |"
        )
    return "\n".join(rows)


def main() -> None:
    t0 = time.perf_counter()
    tallies, rejected, _ = run()
    print(f"Machine: {machine()}  ")
    print(f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}  ")
    print(
        f"Check: arcface_mbf embedding norm <= {MAX_NORM:g} and landmark geometry; target bar: score >= "
        f"{TARGET_MIN_SCORE:g} and norm <= {TARGET_MAX_NORM:g}; {time.perf_counter() - t0:.0f} s\n"
    )
    print(table(tallies))
    print(f"\nRejected detections ({len(rejected)}):")
    for line in rejected:
        print(f"- {line}")


if __name__ == "__main__":
    main()
