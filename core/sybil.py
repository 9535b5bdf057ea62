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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import CloakdError
from .faces import FaceAnalyzer
from .identity import distances
from .photo.container import OutputOptions
from .protect import ProtectRequest, protect


@dataclass(frozen=True)
class Candidate:
    """A candidate photo. ``descriptor`` (its one face) or ``refusal`` are filled by
    :func:`describe_candidates`; a pool described once can serve many Sybil images. ``seed``: the seed of
    this candidate's cloak (None: the one :func:`make_sybil` is given)."""

    label: str
    data: bytes
    descriptor: np.ndarray | None = None
    refusal: str = ""
    seed: int | None = None


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
    tried: list[Tried] = field(default_factory=list)  # every candidate refused or cloaked, in that order
    reason: str = ""
    usable: int = 0  # candidates that could serve (one face, not the user), cloaked or not
    stopped: str = ""  # why it stopped before the end (``busy``), "" when it went through


@dataclass
class Ranking:
    """Usable candidates by their clean distance to where they are pulled (closest first), the refused ones
    with why, how many were usable, and why the ranking stopped early ("" when every candidate was seen)."""

    ranked: list[tuple[float, Candidate]]
    refused: list[Tried]
    usable: int = 0
    stopped: str = ""


LOOKS_LIKE_THE_USER = "looks like the user: it would leak the user, not protect them"


def _go_on() -> str:
    return ""


def sybil_target(references: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    """Where a user's Sybil images are pulled: the centroid of the user's reference descriptors (their
    uncloaked features), which is where a tracker's leaked clean photos of the user concentrate. Given the
    references by extractor name, the centroid in each extractor's space (the cloak then pulls towards the
    user in every one of them)."""
    if isinstance(references, Mapping):
        return {name: sybil_target(r) for name, r in references.items()}
    references = np.atleast_2d(np.asarray(references, np.float32))
    if len(references) == 0:
        raise CloakdError("Sybil images need the user's reference descriptors: enrol the user first")
    return references.mean(axis=0)


def describe_candidate(analyzer: FaceAnalyzer, candidate: Candidate) -> Candidate:
    """The candidate with the descriptor of its one face, or with why it cannot serve (described once:
    a candidate that has either already is returned as it is)."""
    if candidate.descriptor is not None or candidate.refusal:
        return candidate
    try:
        _, faces = analyzer.read(candidate.data, candidate.label)
    except CloakdError as e:
        return replace(candidate, refusal=str(e))
    if len(faces) != 1:
        return replace(candidate, refusal=f"{len(faces)} faces: a Sybil candidate must show one face")
    return replace(candidate, descriptor=faces[0].descriptor)


def describe_candidates(analyzer: FaceAnalyzer, candidates: Iterable[Candidate]) -> list[Candidate]:
    """Each candidate with the descriptor of its one face, or with why it cannot serve."""
    return [describe_candidate(analyzer, c) for c in candidates]


def rank_candidates(
    analyzer: FaceAnalyzer,
    candidates: Iterable[Candidate],
    toward: np.ndarray,
    references: np.ndarray | None = None,
    *,
    keep: int | None = None,
    at_most: int | None = None,
    busy: Callable[[], str] = _go_on,
) -> Ranking:
    """Describe the candidates (in the order given, each once) and rank the usable ones by their clean
    distance to ``toward``, closest first: the cloak has the least way to go. A candidate within the
    same-person threshold of ``references`` is refused: publishing it would leak the user.

    ``keep``: only the ``keep`` closest are kept (a large pool then holds the bytes of ``keep`` photos at a
    time); ``at_most``: stop after that many usable candidates; ``busy`` is asked before each candidate and
    returns why to stop now ("" to go on).
    """
    threshold = analyzer.extractor.match_threshold
    ranking = Ranking([], [])
    pending = iter(candidates)  # taken one at a time: a lazy pool reads no candidate it does not get to
    while at_most is None or ranking.usable < at_most:
        if why := busy():
            ranking.stopped = why
            break
        c = next(pending, None)
        if c is None:
            break
        c = describe_candidate(analyzer, c)
        if c.refusal:
            ranking.refused.append(Tried(c.label, None, c.refusal))
        elif references is not None and len(references) and distances(c.descriptor, references)[0] < threshold:
            ranking.refused.append(Tried(c.label, None, LOOKS_LIKE_THE_USER))
        else:
            ranking.usable += 1
            ranking.ranked.append((float(np.linalg.norm(c.descriptor - toward)), c))
            ranking.ranked.sort(key=lambda item: item[0])
            if keep is not None:
                del ranking.ranked[keep:]
    return ranking


def _cloak_candidate(
    analyzer: FaceAnalyzer, c: Candidate, start: float, request: ProtectRequest
) -> tuple[Tried, SybilResult | None]:
    """One candidate (``start`` from where it is pulled) protected with ``request``: what became of it, and
    the image when its cloak verified."""
    result = protect(analyzer, c.data, request, label=c.label)
    face = result.faces[0] if result.faces else None
    if not result.ok or face is None or face.to_target_after is None:
        return Tried(c.label, None, result.reason or "no face after cloaking"), None
    image = SybilResult(True, result.data, result.extension, c.label, face.to_target_after, start)
    return Tried(c.label, face.to_target_after), image


def make_sybil(
    analyzer: FaceAnalyzer,
    candidates: Iterable[Candidate],
    toward: np.ndarray | Mapping[str, np.ndarray],
    *,
    references: np.ndarray | None = None,
    tries: int = 3,
    at_most: int | None = None,
    mode: str = "mid",
    seed: int = 0,
    options: OutputOptions = OutputOptions(),
    busy: Callable[[], str] = _go_on,
) -> SybilResult:
    """Cloak up to ``tries`` of the closest candidates towards ``toward`` (the user's uncloaked features:
    the primary extractor's descriptor, or descriptors by extractor name as :func:`sybil_target` gives them)
    and keep the verified one that ends closest. Metadata is stripped as for any protected photo.

    Each candidate is described once (none again that :func:`describe_candidates` described already);
    ``at_most`` and ``busy`` as for :func:`rank_candidates`, ``busy`` also before each cloak: a run stopped
    then keeps the best image made so far.
    """
    target = ProtectRequest(target=toward).targets(analyzer.extractor.name)
    ranking = rank_candidates(
        analyzer,
        candidates,
        target[analyzer.extractor.name],
        references,
        keep=max(1, tries),
        at_most=at_most,
        busy=busy,
    )
    tried, stopped = list(ranking.refused), ranking.stopped
    best: SybilResult | None = None
    for start, c in [] if stopped else ranking.ranked:
        if stopped := busy():
            break
        request = ProtectRequest(target=target, mode=mode, seed=seed if c.seed is None else c.seed, options=options)
        outcome, image = _cloak_candidate(analyzer, c, start, request)
        tried.append(outcome)
        if image is not None and (best is None or image.distance < best.distance):
            best = image
    if best is None:
        reasons = "; ".join(f"{t.label}: {t.reason}" for t in tried) or "no candidates"
        best = SybilResult(False, reason=stopped or f"no Sybil image could be made ({reasons})")
    best.tried, best.usable, best.stopped = tried, ranking.usable, stopped
    return best


__all__ = [
    "Candidate",
    "Ranking",
    "SybilResult",
    "Tried",
    "describe_candidate",
    "describe_candidates",
    "make_sybil",
    "rank_candidates",
    "sybil_target",
]
