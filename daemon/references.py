"""Each user's enrolled reference descriptors (``cloakd enrol``), kept in the state directory.

``STATE/users/NAME/references.npz``: one 128-d descriptor per accepted reference photo, with the photo's
name and sha256 (so enrolling the same photo twice counts it once) and the extractor that made them; and
the same faces described by each other extractor of the cloak (``space.NAME``), so that Sybil images can
be pulled towards the user in every space the cloak moves (records from before hold the primary only).
Only descriptors are stored, never the photos; they are biometric data, readable by cloakd's own account
only (daemon/state.py). Enrolling again adds photos; the whole set is re-checked
for consistency (one person) each time.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cloakd.core.errors import CloakdError
from cloakd.core.identity import References, select_references

from .files import replace_file
from .state import user_dir

if TYPE_CHECKING:  # torch-heavy
    from cloakd.core.faces import FaceAnalyzer


SPACE = "space."  # the key prefix of another extractor's descriptors in a record


@dataclass(frozen=True)
class Described:
    """One photo offered for enrolment, already described."""

    label: str
    sha256: str
    descriptor: np.ndarray | None
    faces: int
    spaces: Mapping[str, np.ndarray] = field(default_factory=dict)  # the face by the other extractors


class ReferenceStore:
    def __init__(self, state_dir, extractor: str):
        self.state_dir = state_dir
        self.extractor = extractor

    def path(self, user: str, *, create: bool = False):
        return user_dir(self.state_dir, user, create=create) / "references.npz"

    def _load(self, user: str) -> list[Described]:
        p = self.path(user)
        try:
            raw = np.load(io.BytesIO(p.read_bytes()), allow_pickle=False)
            if str(raw["extractor"]) != self.extractor:
                raise CloakdError(
                    f"{p}: references made with extractor {raw['extractor']}, not {self.extractor}; "
                    f"enrol the user again with 'cloakd enrol --user {user} --replace PHOTOS'"
                )
            spaces = {k.removeprefix(SPACE): raw[k] for k in raw.files if k.startswith(SPACE)}
            rows = zip(raw["labels"], raw["sha256"], raw["descriptors"])
            return [
                Described(str(label), str(sha), desc, 1, {k: v[i] for k, v in spaces.items()})
                for i, (label, sha, desc) in enumerate(rows)
            ]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError) as e:
            raise CloakdError(
                f"{p}: unreadable reference record ({e}); enrol the user again with "
                f"'cloakd enrol --user {user} --replace PHOTOS'"
            ) from None

    def get(self, user: str) -> np.ndarray | None:
        """The user's enrolled descriptors (n x 128), or None if the user has not been enrolled."""
        stored = self._load(user)
        return np.stack([d.descriptor for d in stored]).astype(np.float32) if stored else None

    def spaces(self, user: str) -> dict[str, np.ndarray] | None:
        """The user's enrolled faces by extractor name (n x D each, the primary's among them), or None."""
        stored = self._load(user)
        return stacked(stored, self.extractor) if stored else None

    def enrol(self, user: str, photos: list[Described], threshold: float, replace: bool = False) -> References:
        """Add ``photos`` to the user's references (or replace them), keep the consistent one-face ones,
        persist, and return what was accepted and rejected."""
        stored = [] if replace else self._load(user)
        known = {d.sha256 for d in stored}
        fresh = [p for p in photos if p.sha256 not in known]
        offered = stored + fresh
        refs = select_references([(d.label, d.descriptor, d.faces) for d in offered], threshold)
        if len(refs.descriptors) == 0:
            raise CloakdError(
                f"no usable reference photo for {user}: " + "; ".join(f"{r.label}: {r.reason}" for r in refs.rejected)
            )
        kept = [offered[i] for i in refs.kept]
        others = {SPACE + k: v for k, v in stacked(kept, self.extractor).items() if k != self.extractor}
        buf = io.BytesIO()
        np.savez(
            buf,
            descriptors=np.stack([d.descriptor for d in kept]).astype(np.float32),
            labels=np.array([d.label for d in kept]),
            sha256=np.array([d.sha256 for d in kept]),
            extractor=np.array(self.extractor),
            **others,
        )
        replace_file(self.path(user, create=True), buf.getvalue())
        return refs


def describe(analyzer: "FaceAnalyzer", label: str, data: bytes) -> Described:
    """A photo offered as a reference: its face count and, for one face, that face described by every
    extractor of the cloak. CloakdError for a photo that cannot be read."""
    rgb, faces = analyzer.read(data, label)
    sha256 = hashlib.sha256(data).hexdigest()
    if len(faces) != 1:
        return Described(label, sha256, None, len(faces))
    spaces = analyzer.describe_face(rgb, faces[0])
    del spaces[analyzer.extractor.name]  # the primary's descriptor came with the face
    return Described(label, sha256, faces[0].descriptor, 1, spaces)


def stacked(photos: list[Described], primary: str) -> dict[str, np.ndarray]:
    """The photos' faces by extractor name: the primary's descriptors, and each other extractor's that
    described every one of the photos."""
    out = {primary: np.stack([d.descriptor for d in photos]).astype(np.float32)}
    for name in sorted(set.intersection(*(set(d.spaces) for d in photos)) - {primary}) if photos else ():
        out[name] = np.stack([d.spaces[name] for d in photos]).astype(np.float32)
    return out
