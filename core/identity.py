"""The user's identity in feature space: reference descriptors, and which face in a photo is the user's.

Pure functions on descriptors (arrays); the photos are described elsewhere (:mod:`.faces`).

Enrolment keeps only reference photos that show one face, and drops a reference that does not look like
the others (it would otherwise make every look-alike "the user"). In a photo, at most one face is the
user's: the face closest to the references' centroid, if it is close enough (see MATCH_MARGIN).
Everyone else follows the user's policy for other people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Others(StrEnum):
    """What is done with the faces that are not the user's (a user's ``others`` setting, ``--others``)."""

    AWAY = "away"  # cloaked untargeted, away from their own features: a user's face missed stays protected
    LEAVE = "leave"  # left as they are


@dataclass(frozen=True)
class Rejected:
    label: str
    reason: str


@dataclass
class References:
    """Accepted reference descriptors (one per photo) and the photos rejected, with why."""

    descriptors: np.ndarray
    labels: list[str]
    rejected: list[Rejected] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # indices of the accepted candidates

    @property
    def centroid(self) -> np.ndarray:
        return self.descriptors.mean(axis=0)


def distances(descriptors: np.ndarray, references: np.ndarray) -> np.ndarray:
    """For each descriptor (n x d), its distance to the nearest reference (m x d): n values."""
    descriptors = np.atleast_2d(np.asarray(descriptors, np.float32))
    references = np.atleast_2d(np.asarray(references, np.float32))
    if len(descriptors) == 0 or len(references) == 0:
        return np.full(len(descriptors), np.inf)
    return np.linalg.norm(descriptors[:, None, :] - references[None, :, :], axis=2).min(axis=1)


#: The user's face must lie within (same-person threshold - MATCH_MARGIN) of the references' centroid
#: (rather than near any single reference, which matches more strangers): chosen and measured with
#: bench/whose_face.py, results in README.md, "Measured" / "Identity".
MATCH_MARGIN = 0.05


def single_out(
    descriptors: np.ndarray, references: np.ndarray, threshold: float, margin: float = MATCH_MARGIN
) -> int | None:
    """Index of the user's face among a photo's face descriptors, or None when no face is close enough
    to the centroid of the references. One person appears once in a photo, so at most one face is
    chosen: the closest (a look-alike standing next to the user is not cloaked towards the user's
    target)."""
    descriptors = np.atleast_2d(np.asarray(descriptors, np.float32))
    references = np.atleast_2d(np.asarray(references, np.float32))
    if len(descriptors) == 0 or len(references) == 0:
        return None
    d = np.linalg.norm(descriptors - references.mean(axis=0), axis=1)
    best = int(np.argmin(d))
    return best if d[best] < threshold - margin else None


#: how much farther than the same-person threshold a reference may lie from the most typical one: photos
#: of one person spread wider around a medoid than pairs are judged (lighting, age, pose)
CONSISTENCY_SLACK = 0.1


def select_references(
    candidates: list[tuple[str, np.ndarray | None, int]], threshold: float, slack: float = CONSISTENCY_SLACK
) -> References:
    """Choose reference descriptors from described photos.

    ``candidates``: (label, descriptor of the photo's face or None, number of faces found). A photo is
    kept when it shows exactly one face and that face is within ``threshold + slack`` of the most typical photo
    (the medoid: smallest median distance to the others), so that all references are one person. With
    fewer than 3 usable photos there is no majority to decide, and every one-face photo is kept.
    """
    rejected: list[Rejected] = []
    usable: list[tuple[int, str, np.ndarray]] = []
    for i, (label, desc, n) in enumerate(candidates):
        if n > 1:
            rejected.append(Rejected(label, f"{n} faces: a reference photo must show the user alone"))
        elif n == 0 or desc is None:
            rejected.append(Rejected(label, "no face found"))
        else:
            usable.append((i, label, np.asarray(desc, np.float32)))
    if len(usable) >= 3:
        x = np.stack([d for _, _, d in usable])
        pair = np.linalg.norm(x[:, None] - x[None], axis=2)
        medoid = int(np.argmin(np.median(pair, axis=1)))  # the most typical photo: the person most shown
        keep = []
        for (i, label, desc), d in zip(usable, pair[medoid]):
            if d < threshold + slack:
                keep.append((i, label, desc))
            else:
                rejected.append(
                    Rejected(
                        label,
                        f"does not look like the other reference photos "
                        f"(distance {d:.2f} to the most typical one; at most "
                        f"{threshold + slack:.2f})",
                    )
                )
        usable = keep
    dim = usable[0][2].shape[0] if usable else 0
    descriptors = np.stack([d for _, _, d in usable]) if usable else np.zeros((0, dim), np.float32)
    return References(descriptors, [label for _, label, _ in usable], rejected, [i for i, _, _ in usable])


__all__ = ["References", "Rejected", "distances", "single_out", "select_references"]
