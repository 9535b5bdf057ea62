"""One photo for one user: its bytes (read with the user's rights) in, what to deliver out.

This is the only place where the service meets the engine: :func:`request_for` builds the request from the
user's settings and persistent target class (:func:`cloakd.core.request_for_target`, as ``cloakd protect
--user`` does), which an engine (daemon/engine/) carries out, here or on another machine;
:func:`protect_original` calls :func:`cloakd.core.protect` on this machine. Nothing is written here.

Target class: chosen once per user (eq. 3) and persisted by the target store. From the user's references
(enrolled descriptors plus the references folder, daemon/identity.py) when there are any, otherwise from
the faces of the first photo that has faces fit to choose a target from (the stricter bar of
core/plausible.py: a clear detection the recogniser sees as a face; a wrong target would stay for good);
until then, faces are cloaked away from their own features only. The references also tell the engine
which face is the user's (at most one per photo; the others follow the user's ``others`` policy); without
them, every face in a photo is cloaked towards the target class.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cloakd.core.errors import ProtectionError
from cloakd.core.photo.container import OutputOptions

from .config import UserConfig
from .identity import UserReferences
from .privileges import Account, Original

if TYPE_CHECKING:  # torch-heavy: the rest of the service (and its tests) run without loading it
    from cloakd.core.faces import FaceAnalyzer
    from cloakd.core.protect import ProtectRequest

    from .targets import StoredTarget, TargetStore

log = logging.getLogger("cloakd.process")


@dataclass(frozen=True)
class ProcessResult:
    """``data``: verified clean bytes, to deliver with ``extension``."""

    data: bytes
    extension: str
    faces: int = 0
    seconds: float = 0.0


@dataclass
class ProcessContext:
    """What photo processing needs beyond the photo: the models (loaded once), the target store and the
    users' references (enrolled and folder, daemon/identity.py)."""

    analyzer: "FaceAnalyzer"
    targets: "TargetStore"
    references: UserReferences
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def target(
        self, user: UserConfig, references: np.ndarray | None, photo: bytes, label: str
    ) -> "StoredTarget | None":
        """The user's target class, choosing (and persisting) it on first need; None while there is no face
        to choose it from (without references: no face of ``photo`` clears the stricter bar)."""
        with self._lock:
            choice = self.targets.get(user.name)
            if choice is not None:
                return choice
            basis = references
            if basis is None:
                _, faces = self.analyzer.read(photo, label)
                fit = [f.descriptor for f in faces if f.fit_for_target]
                basis = np.stack(fit) if fit else None
                if faces and not fit:
                    log.info("%s: no face in %s is clear enough to choose a target class from", user.name, label)
            if basis is None:
                return None
            choice = self.targets.choose(user.name, basis)
            source = f"the user's {len(references)} references" if references is not None else f"the faces in {label}"
            log.info("%s: target class chosen: %s (from %s)", user.name, choice.name, source)
            return choice


def request_for(ctx: ProcessContext, user: UserConfig, account: Account, original: Original) -> "ProtectRequest":
    """What to do with ``original`` for ``user``: the target class (chosen on first need), the user's
    references and settings. An engine (daemon/engine/) carries it out, here or on another machine."""
    from cloakd.core import request_for_target

    references = ctx.references.get(user, account)
    choice = ctx.target(user, references, original.data, str(original.path))
    return request_for_target(
        None if choice is None else choice.name,
        None if choice is None else choice.centroid,
        bank=ctx.targets.bank,
        references=references,
        others=user.others,
        mode=user.mode,
        keep=user.keep_metadata,
        options=OutputOptions(heic_as=user.heic_as),
        seed=int(original.sha256[:8], 16),  # same photo, same output
    )


def protect_original(ctx: ProcessContext, user: UserConfig, account: Account, original: Original) -> ProcessResult:
    """Cloak and clean ``original`` for ``user``. PhotoError for a photo that cannot be protected (e.g.
    ProtectionError: a cloak that did not verify), another CloakdError for a problem of the user's state."""
    from cloakd.core import protect

    t0 = time.perf_counter()
    request = request_for(ctx, user, account, original)
    result = protect(ctx.analyzer, original.data, request, label=str(original.path))
    if not result.ok:
        raise ProtectionError(f"not protected: {result.reason}")
    return ProcessResult(
        data=result.data,
        extension=result.extension,
        faces=len(result.faces),
        seconds=time.perf_counter() - t0,
    )
