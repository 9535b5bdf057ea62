"""The target bank (public identities' descriptors) and the choice of a user's target class (eq. 3).

A bank holds, per public identity, the descriptors of a few of its photos under the primary extractor
(where target classes are chosen) and under each extractor the cloak is optimised against (where the
chosen class is then the target). The one shipped with cloakd (core/data/target_bank.npz) was built from
../shared/data/targets (483 LFW identities x 4 photos) with ``cloakd targets build``; the photos
themselves are not shipped.

Fawkes' rule (section 4, eq. 3): draw K candidate identities at random, and take the one whose centroid is
farthest from *all* of the user's photos: T = argmax_k min_{x in X_U} ||Phi(x) - C_k||.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CloakdError

DEFAULT_BANK = Path(__file__).with_name("data") / "target_bank.npz"
DEFAULT_CANDIDATES = 20


@dataclass(frozen=True)
class TargetBank:
    names: list[str]
    descriptors: list[np.ndarray]  # per identity: n_i x D float32, by the primary extractor
    extractor: str
    #: the same faces described by other extractors: extractor name -> per identity n_i x D_k
    spaces: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def centroids(self) -> np.ndarray:
        return np.stack([d.mean(0) for d in self.descriptors]).astype(np.float32)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise CloakdError(f"identity {name!r} is not in the target bank") from None

    def point(self, name: str, primary: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Identity ``name``'s centroid in every extractor's space the bank holds, by extractor name: where
        a cloak pulls a face towards that class. ``primary`` (a user's stored centroid) replaces the bank's
        own primary centroid, so that a changed bank cannot silently move a chosen target; a class the bank
        no longer holds then keeps its stored primary centroid alone."""
        if primary is not None and name not in self.names:
            return {self.extractor: np.asarray(primary, np.float32)}
        i = self.index(name)
        centroids = {self.extractor: self.descriptors[i].mean(0) if primary is None else np.asarray(primary)}
        centroids.update({k: d[i].mean(0) for k, d in self.spaces.items()})
        return {k: v.astype(np.float32) for k, v in centroids.items()}

    def digest(self) -> str:
        """Content hash of the primary descriptors, so a stored choice can tell which bank it came from
        (describing the same faces with more extractors does not change it)."""
        h = hashlib.sha256(self.extractor.encode())
        for n, d in zip(self.names, self.descriptors):
            h.update(n.encode())
            h.update(np.ascontiguousarray(d, np.float32).tobytes())
        return h.hexdigest()[:16]

    def to_bytes(self) -> bytes:
        counts = np.array([len(d) for d in self.descriptors], np.int32)
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            names=np.array(self.names),
            counts=counts,
            descriptors=np.concatenate(self.descriptors).astype(np.float32),
            extractor=np.array(self.extractor),
            **{f"space.{k}": np.concatenate(d).astype(np.float32) for k, d in self.spaces.items()},
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "bank") -> "TargetBank":
        try:
            z = np.load(io.BytesIO(data), allow_pickle=False)
            names = [str(n) for n in z["names"]]
            counts = z["counts"].astype(int)
            flat = z["descriptors"].astype(np.float32)
            extractor = str(z["extractor"])
            spaces = {k.split(".", 1)[1]: z[k].astype(np.float32) for k in z.files if k.startswith("space.")}
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad bank file
            raise CloakdError(f"{source}: not a cloakd target bank ({type(e).__name__}: {e})") from None
        if (
            counts.sum() != len(flat)
            or len(names) != len(counts)
            or (counts < 1).any()
            or any(len(v) != len(flat) for v in spaces.values())
        ):
            raise CloakdError(f"{source}: inconsistent target bank (names, counts and descriptors disagree)")
        split = np.cumsum(counts)[:-1]
        return cls(
            names, list(np.split(flat, split)), extractor, {k: list(np.split(v, split)) for k, v in spaces.items()}
        )

    @classmethod
    def load(cls, path: Path | str | None = None) -> "TargetBank":
        path = Path(path) if path is not None else DEFAULT_BANK
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CloakdError(f"cannot read target bank {path}: {e.strerror}") from None
        return cls.from_bytes(data, str(path))


def build_bank(analyzer, folder: Path, on_skip=None) -> TargetBank:
    """Describe each identity sub-folder of ``folder`` (the main face of each of its photos) with every one of
    the analyser's cloak extractors: target classes are chosen in the primary extractor's space and pursued
    in every extractor's. ``on_skip(message)`` hears of every identity left out (no usable face).
    CloakdError when no identity has a usable face."""
    from .faces import main_face
    from .photo.discover import photo_files

    if not folder.is_dir():
        raise CloakdError(f"{folder}: not a folder of identity sub-folders")
    primary = analyzer.extractor.name
    names, spaces = [], {e.name: [] for e in analyzer.cloak_extractors}
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        rows = []
        for path in photo_files(person):
            try:
                rgb, faces = analyzer.read(path.read_bytes(), str(path))
            except (CloakdError, OSError):
                continue
            if (face := main_face(faces)) is not None:
                rows.append(analyzer.describe_face(rgb, face))
        if not rows:
            if on_skip is not None:
                on_skip(f"skipping identity {person.name}: no usable face")
            continue
        names.append(person.name)
        for k in spaces:
            spaces[k].append(np.stack([r[k] for r in rows]).astype(np.float32))
    if not names:
        raise CloakdError(f"{folder}: no identity with a usable face photo")
    return TargetBank(names, spaces.pop(primary), primary, spaces)


@dataclass(frozen=True)
class TargetChoice:
    name: str
    centroid: np.ndarray
    min_distance: float  # min over the user's photos of the distance to the centroid
    candidates: tuple[str, ...]


def choose_target(
    bank: TargetBank,
    user_descriptors: np.ndarray,
    *,
    k: int = DEFAULT_CANDIDATES,
    rng: np.random.Generator,
    exclude: tuple[str, ...] = (),
) -> TargetChoice:
    """Eq. 3: of K random candidates, the identity whose centroid is farthest from all user photos."""
    user = np.atleast_2d(np.asarray(user_descriptors, np.float32))
    if len(user) == 0:
        raise CloakdError("no descriptors of the user's face to choose a target from")
    pool = [i for i, n in enumerate(bank.names) if n not in exclude]
    if not pool:
        raise CloakdError("the target bank has no identity left to choose from")
    picks = rng.choice(pool, size=min(k, len(pool)), replace=False)
    cents = bank.centroids[picks]
    dists = np.linalg.norm(user[:, None, :] - cents[None, :, :], axis=2).min(axis=0)
    best = int(np.argmax(dists))
    i = int(picks[best])
    return TargetChoice(bank.names[i], bank.centroids[i], float(dists[best]), tuple(bank.names[j] for j in picks))
