"""Sybil images (Fawkes section 7.2): another face, cloaked so that its features move towards the user's.

A user whose clean photos have leaked to a tracker is helped by a second ("Sybil") identity whose images
lie close to the user's real features: the tracker's model then has to split that region of feature
space between two labels and misclassifies the user's clean photos. Each Sybil image is a candidate
photo (a consenting friend, a generated face: one face per photo) cloaked TOWARDS the user's uncloaked
features with the same DSSIM budget and the same verification gate as the user's own photos. Of several
candidates the one whose written face ends closest to the user's features is kept.

Candidates that look like the user (within the same-person threshold of the references) are refused:
publishing them would leak the user, not protect them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import CloakdError
from .faces import FaceAnalyzer
from .identity import distances
from .photo.container import OutputOptions
from .photo.decode import decode
from .protect import ProtectRequest, protect


@dataclass(frozen=True)
class Candidate:
    """A candidate photo. ``descriptor`` (its one face) or ``refusal`` are filled by
    :func:`describe_candidates`; a pool described once can serve many Sybil images."""

    label: str
    data: bytes
    descriptor: np.ndarray | None = None
    refusal: str = ""


@dataclass
class Tried:
    label: str
    distance: float | None  # the written face's distance to the user's features (None: not made)
    reason: str = ""


@dataclass
class SybilResult:
    ok: bool
    data: bytes | None = None
    extension: str = ""
    label: str = ""  # the candidate kept
    distance: float | None = None  # kept face's distance to the user's features, on the written bytes
    start: float | None = None  # the same candidate's distance before cloaking
    tried: list[Tried] = field(default_factory=list)
    reason: str = ""


def sybil_target(references: np.ndarray, index: int = 0) -> np.ndarray:
    """Where the ``index``-th Sybil image of a user is pulled: the centroid of the user's reference
    descriptors (their uncloaked features), which is where a tracker's leaked clean photos of the user
    concentrate. ``index`` is part of the interface so that the rule can spread images later."""
    references = np.atleast_2d(np.asarray(references, np.float32))
    if len(references) == 0:
        raise CloakdError("Sybil images need the user's reference descriptors: enrol the user first")
    del index
    return references.mean(axis=0)


def describe_candidates(analyzer: FaceAnalyzer, candidates: list[Candidate]) -> list[Candidate]:
    """Each candidate with the descriptor of its one face, or with why it cannot serve."""
    out = []
    for c in candidates:
        if c.descriptor is not None or c.refusal:
            out.append(c)
            continue
        try:
            pixels = decode(c.data, label=c.label).rgb
        except CloakdError as e:
            out.append(replace(c, refusal=str(e)))
            continue
        faces = analyzer.analyse(pixels)
        if len(faces) != 1:
            out.append(replace(c, refusal=f"{len(faces)} faces: a Sybil candidate must show one face"))
        else:
            out.append(replace(c, descriptor=faces[0].descriptor))
    return out


def rank_candidates(analyzer: FaceAnalyzer, candidates: list[Candidate], toward: np.ndarray,
                    references: np.ndarray | None = None) -> tuple[list[tuple[float, Candidate]], list[Tried]]:
    """Usable candidates by their clean distance to ``toward`` (closest first: the cloak has the least way
    to go), and the refused ones with why."""
    threshold = analyzer.extractor.match_threshold
    ranked, refused = [], []
    for c in describe_candidates(analyzer, candidates):
        if c.refusal:
            refused.append(Tried(c.label, None, c.refusal))
        elif references is not None and len(references) and distances(c.descriptor, references)[0] < threshold:
            refused.append(Tried(c.label, None, "looks like the user: it would leak the user, not protect them"))
        else:
            ranked.append((float(np.linalg.norm(c.descriptor - toward)), c))
    ranked.sort(key=lambda item: item[0])
    return ranked, refused


def make_sybil(analyzer: FaceAnalyzer, candidates: list[Candidate], toward: np.ndarray, *,
               references: np.ndarray | None = None, tries: int = 3, mode: str = "mid", seed: int = 0,
               options: OutputOptions = OutputOptions()) -> SybilResult:
    """Cloak up to ``tries`` of the closest candidates towards ``toward`` (the user's uncloaked features)
    and keep the verified one that ends closest. Metadata is stripped as for any protected photo."""
    toward = np.asarray(toward, np.float32)
    ranked, tried = rank_candidates(analyzer, candidates, toward, references)
    best: SybilResult | None = None
    for start, c in ranked[: max(1, tries)]:
        result = protect(analyzer, c.data, ProtectRequest(target=toward, mode=mode, seed=seed, options=options),
                         label=c.label)
        face = result.faces[0] if result.faces else None
        if not result.ok or face is None or face.to_target_after is None:
            tried.append(Tried(c.label, None, result.reason or "no face after cloaking"))
            continue
        tried.append(Tried(c.label, face.to_target_after))
        if best is None or face.to_target_after < best.distance:
            best = SybilResult(True, result.data, result.extension, c.label, face.to_target_after, start)
    if best is None:
        reasons = "; ".join(f"{t.label}: {t.reason}" for t in tried) or "no candidates"
        return SybilResult(False, tried=tried, reason=f"no Sybil image could be made ({reasons})")
    best.tried = tried
    return best


__all__ = ["Candidate", "SybilResult", "Tried", "describe_candidates", "make_sybil", "rank_candidates", "sybil_target"]
