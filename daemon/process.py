"""One photo for one user: its bytes (read with the user's rights) in, what to deliver out.

This is the only place where the service meets the engine: it builds the ProtectRequest from the user's
settings and persistent target class and calls :func:`cloakd.core.protect.protect`. Nothing is written here.

Target class: chosen once per user (eq. 3) and persisted by the target store. From the user's reference
photos (largest face of each) when the user has a references folder, otherwise from the faces of the
first photo that has any. The references also tell the engine which faces are the user's; without them,
every face in a photo is cloaked towards the target class.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloakd.core.errors import CloakdError
from cloakd.core.photo.container import OutputOptions
from cloakd.core.photo.decode import decode

from .config import UserConfig
from .privileges import Account, Original, acting_as, read_photo
from .watch import is_temporary

if TYPE_CHECKING:  # torch-heavy: the rest of the service (and its tests) run without loading it
    from cloakd.core.faces import FaceAnalyzer

    from .targets import StoredTarget, TargetStore

log = logging.getLogger("cloakd.process")


@dataclass(frozen=True)
class ProcessResult:
    """``ok``: ``data`` holds verified clean bytes to deliver with ``extension``; else ``reason`` says why not."""

    ok: bool
    data: bytes | None
    extension: str
    reason: str = ""
    faces: int = 0
    seconds: float = 0.0
    target: str | None = None


@dataclass
class ProcessContext:
    """What photo processing needs beyond the photo: the models (loaded once) and the target store."""

    analyzer: "FaceAnalyzer"
    targets: "TargetStore"
    _references: dict[str, tuple[tuple, np.ndarray | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def references(self, user: UserConfig, account: Account) -> np.ndarray | None:
        """The user's reference descriptors (one per reference photo with a face), recomputed when the
        folder's listing changes; None without a references folder or without any face in it."""
        if user.references is None:
            return None
        listing = _listing(account, user.references)
        with self._lock:
            cached = self._references.get(user.name)
            if cached is not None and cached[0] == listing:
                return cached[1]
            descriptors = []
            for name, _, _ in listing:
                path = user.references / name
                try:
                    faces = _faces(self.analyzer, read_photo(account, path, [user.references]).data, str(path))
                except (CloakdError, OSError) as e:
                    log.warning("%s: reference photo skipped: %s", user.name, e)
                    continue
                if faces:
                    descriptors.append(max(faces, key=_area).descriptor)
            refs = np.stack(descriptors) if descriptors else None
            if refs is None and listing:
                log.warning("%s: no face found in the reference photos in %s", user.name, user.references)
            self._references[user.name] = (listing, refs)
            return refs

    def target(self, user: UserConfig, references: np.ndarray | None, photo: bytes, label: str) -> "StoredTarget | None":
        """The user's target class, choosing (and persisting) it on first need; None while there is no face
        to choose it from."""
        with self._lock:
            choice = self.targets.get(user.name)
            if choice is not None:
                return choice
            basis = references
            if basis is None:
                faces = _faces(self.analyzer, photo, label)
                basis = np.stack([f.descriptor for f in faces]) if faces else None
            if basis is None:
                return None
            choice = self.targets.choose(user.name, basis)
            log.info("%s: target class chosen: %s (from %s)", user.name, choice.name,
                     "the reference photos" if references is not None else f"the faces in {label}")
            return choice


def _listing(account: Account, folder: Path) -> tuple:
    with acting_as(account):
        try:
            listing = []
            for entry in sorted(folder.iterdir()):
                if not is_temporary(entry.name):
                    st = entry.lstat()
                    listing.append((entry.name, st.st_size, st.st_mtime_ns))
            return tuple(listing)
        except OSError as e:
            log.warning("cannot list the reference folder %s: %s", folder, e.strerror or e)
            return ()


def _faces(analyzer: "FaceAnalyzer", data: bytes, label: str) -> list:
    pixels = decode(data, label=label).pixels
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return analyzer.analyse(pixels)


def _area(face) -> float:
    x1, y1, x2, y2 = face.box
    return float((x2 - x1) * (y2 - y1))


def protect_original(ctx: ProcessContext, user: UserConfig, account: Account, original: Original) -> ProcessResult:
    """Cloak and clean ``original`` for ``user``. CloakdError for a photo that cannot be processed."""
    from cloakd.core.protect import ProtectRequest, protect

    t0 = time.perf_counter()
    label = str(original.path)
    references = ctx.references(user, account)
    choice = ctx.target(user, references, original.data, label)
    request = ProtectRequest(
        target=None if choice is None else np.asarray(choice.centroid, dtype=np.float32),
        references=references,
        others=user.others,
        mode=user.mode,
        keep=user.keep_metadata,
        options=OutputOptions(heif_as=user.heic_as),
        seed=int(original.sha256[:8], 16),  # same photo, same output
    )
    result = protect(ctx.analyzer, original.data, request, label=label)
    return ProcessResult(
        ok=result.ok,
        data=result.data if result.ok else None,
        extension=result.extension,
        reason=result.reason,
        faces=len(result.faces),
        seconds=time.perf_counter() - t0,
        target=None if choice is None else choice.name,
    )


def process_photo(ctx: ProcessContext, user: UserConfig, account: Account, path: Path) -> ProcessResult:
    """Read ``path`` with ``account``'s rights (within ``user``'s outbound folders) and protect it."""
    original = read_photo(account, path, [f.path for f in user.outbound])
    return protect_original(ctx, user, account, original)
