"""Sybil images (core): another face cloaked towards the user's features, best candidate kept, fail closed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cloakd.core.faces import main_face
from cloakd.core.photo.verify import verify_clean
from cloakd.core.sybil import Candidate, describe_candidates, make_sybil, rank_candidates, sybil_target


def _descriptor(analyzer, data: bytes) -> np.ndarray:
    return main_face(analyzer.read(data)[1]).descriptor


def test_sybil_image_moves_another_face_towards_the_user(analyzer, data_dir):
    faces = data_dir / "faces"
    user = sorted((faces / "Julianne_Moore").glob("*.jpg"))
    refs = np.stack([_descriptor(analyzer, p.read_bytes()) for p in user[:4]])
    toward = sybil_target(refs)
    candidates = [Candidate(p.name, p.read_bytes()) for p in sorted((faces / "Meryl_Streep").glob("*.jpg"))[:3]]
    refused = [
        Candidate("user.jpg", user[6].read_bytes()),  # the user herself: would leak, not protect
        Candidate("group.jpg", (data_dir / "groups" / "dlib_2008_002079.jpg").read_bytes()),
        Candidate("notes.jpg", b"not a photo"),
    ]
    ranking = rank_candidates(analyzer, candidates + refused, toward, refs)
    ranked, rejected = ranking.ranked, ranking.refused
    assert ranking.usable == len(ranked) and not ranking.stopped
    assert [c.label for _, c in ranked] and {c.label for _, c in ranked} <= {c.label for c in candidates}
    assert [d for d, _ in ranked] == sorted(d for d, _ in ranked)
    reasons = {t.label: t.reason for t in rejected}
    assert "looks like the user" in reasons["user.jpg"] and "faces" in reasons["group.jpg"]
    assert "not an image" in reasons["notes.jpg"]

    res = make_sybil(analyzer, candidates + refused, toward, references=refs, tries=2, seed=3)
    assert res.ok, res.reason
    assert res.label == min((t for t in res.tried if t.distance is not None), key=lambda t: t.distance).label
    verify_clean(res.data)  # metadata stripped like any published photo
    written = _descriptor(analyzer, res.data)
    assert abs(np.linalg.norm(written - toward) - res.distance) < 0.05  # the gate's own measurement
    assert res.distance <= res.start - 0.15  # moved towards the user's features by the gate's margin
    # and it is still not the user: the tracker sees a different photo of a different person
    original = _descriptor(analyzer, next(c.data for c in candidates if c.label == res.label))
    assert np.linalg.norm(written - original) >= 0.25


def test_no_usable_candidate_is_a_clear_refusal(analyzer, data_dir):
    refs = np.stack(
        [_descriptor(analyzer, p.read_bytes()) for p in sorted((data_dir / "faces" / "Tim_Henman").glob("*.jpg"))[:3]]
    )
    res = make_sybil(
        analyzer,
        [Candidate("g.jpg", (data_dir / "groups" / "dlib_2008_002079.jpg").read_bytes())],
        sybil_target(refs),
        references=refs,
    )
    assert not res.ok and res.data is None and "g.jpg" in res.reason and "faces" in res.reason


def test_candidates_are_described_once_taken_lazily_and_bounded(analyzer, data_dir):
    """A described candidate is never decoded again; a lazy pool is read only as far as the ranking goes;
    ``keep`` bounds the bytes held, ``busy`` stops before the next candidate or cloak."""
    faces = data_dir / "faces"
    refs = np.stack([_descriptor(analyzer, p.read_bytes()) for p in sorted((faces / "Tim_Henman").glob("*.jpg"))[:3]])
    toward = sybil_target(refs)
    pool = [Candidate(p.name, p.read_bytes()) for p in sorted((faces / "Keanu_Reeves").glob("*.jpg"))[:3]]
    described = describe_candidates(analyzer, pool)
    assert all(c.descriptor is not None and not c.refusal for c in described)
    # bytes that are not a photo: had they been decoded again, the candidates would have been refused
    again = rank_candidates(analyzer, [replace(c, data=b"not a photo") for c in described], toward, refs, keep=1)
    assert again.usable == 3 and not again.refused and len(again.ranked) == 1
    closest = min(described, key=lambda c: np.linalg.norm(c.descriptor - toward))
    assert again.ranked[0][1].label == closest.label

    taken = []

    def lazily():
        for c in pool:
            taken.append(c.label)
            yield c

    first = rank_candidates(analyzer, lazily(), toward, refs, at_most=1)
    assert first.usable == 1 and taken == [pool[0].label]  # the second photo was never read

    asked = []

    def busy() -> str:  # free while the three candidates are ranked, then a photo arrives
        asked.append(1)
        return "photos first" if len(asked) > 3 else ""

    res = make_sybil(analyzer, described, toward, references=refs, busy=busy)
    assert not res.ok and res.stopped == "photos first" and res.reason == "photos first"
    assert res.usable == 3 and res.tried == []  # stopped before the first cloak
