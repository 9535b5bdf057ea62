"""A user's references as the service uses them: the enrolled descriptors plus the references folder.

Two sources make one set of the user's uncloaked features. ``cloakd enrol`` stores descriptors in the state
directory (daemon/references.py); they are read again whenever that file changes, so an enrolment takes
effect in the running service without a restart. The configuration's ``references`` folder holds photos the
user keeps up to date; they are described again whenever the folder's listing changes, and go through the
same selection as an enrolment (one face each, all one person: core/identity.py), the rejected ones logged
once per listing change with why.

The set chooses the target class (eq. 3), tells the engine which face in a photo is the user's, and is
where Sybil images are pulled. Without either source there are no references (None), and the service
keeps its behaviour from before enrolment existed (process.py).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloakd.core.errors import CloakdError, os_error_text
from cloakd.core.identity import select_references

from .config import UserConfig
from .privileges import Account, acting_as, read_photo
from .references import ReferenceStore, describe, stacked
from .watch import is_temporary

if TYPE_CHECKING:  # torch-heavy: the rest of the service (and its tests) run without loading it
    from cloakd.core.faces import FaceAnalyzer

log = logging.getLogger("cloakd.identity")


class UserReferences:
    """Per user: enrolled descriptors (n x D) and the folder's accepted ones, stacked; cached until a source
    changes. Thread-safe (workers and the Sybil job ask from their own threads)."""

    def __init__(self, analyzer: "FaceAnalyzer", state_dir: Path):
        self.analyzer = analyzer
        self.store = ReferenceStore(state_dir, analyzer.extractor.name)
        self._enrolled: dict[str, tuple[tuple, dict[str, np.ndarray] | None]] = {}
        self._folder: dict[str, tuple[tuple, dict[str, np.ndarray] | None]] = {}
        self._lock = threading.Lock()

    def get(self, user: UserConfig, account: Account) -> np.ndarray | None:
        """All of the user's reference descriptors (the primary extractor's), or None when the user has none."""
        spaces = self.spaces(user, account)
        return None if spaces is None else spaces[self.analyzer.extractor.name]

    def spaces(self, user: UserConfig, account: Account) -> dict[str, np.ndarray] | None:
        """The user's reference faces by extractor name: the primary's descriptors from every source, and each
        other extractor's from the sources that have them. An enrolment made before an extractor existed
        lacks its space; the references folder's photos, described anew, complete it. A space no source has
        is absent: Sybil images then only push away from the candidate's own features in that extractor."""
        parts = [p for p in (self.enrolled(user.name), self.folder(user, account)) if p is not None]
        if not parts:
            return None
        names = set().union(*parts)
        return {k: np.concatenate([p[k] for p in parts if k in p]).astype(np.float32) for k in sorted(names)}

    def enrolled(self, name: str) -> dict[str, np.ndarray] | None:
        """The descriptors ``cloakd enrol`` stored, re-read when the file is replaced. An unreadable record
        is logged (once per version of the file) and not used: photos are then cloaked as without references."""
        path = self.store.path(name)
        try:
            st = os.stat(path)
            version: tuple = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            version = ()
        except OSError as e:
            version = ("error", e.strerror)
        with self._lock:
            cached = self._enrolled.get(name)
            if cached is not None and cached[0] == version:
                return cached[1]
            refs = None
            if version:
                try:
                    refs = self.store.spaces(name)
                except CloakdError as e:
                    log.error("%s: enrolled references not used: %s", name, e)
                else:
                    log.info(
                        "%s: %d enrolled reference descriptors loaded from %s",
                        name,
                        0 if refs is None else len(refs[self.analyzer.extractor.name]),
                        path,
                    )
            self._enrolled[name] = (version, refs)
            return refs

    def folder(self, user: UserConfig, account: Account) -> dict[str, np.ndarray] | None:
        """The accepted faces of the references folder's photos by extractor name, read with the user's
        rights."""
        if user.references is None:
            return None
        listing = _listing(account, user.references)
        with self._lock:
            cached = self._folder.get(user.name)
            if cached is not None and cached[0] == listing:
                return cached[1]
            described = []
            for name, _, _ in listing:
                path = user.references / name
                try:
                    photo = read_photo(account, path, [user.references], "references folder")
                    described.append(describe(self.analyzer, str(path), photo.data))
                except (CloakdError, OSError) as e:
                    why = os_error_text(e, path) if isinstance(e, OSError) else str(e)
                    log.warning("%s: reference photo not used: %s", user.name, why)
            chosen = select_references(
                [(d.label, d.descriptor, d.faces) for d in described], self.analyzer.extractor.match_threshold
            )
            for rejected in chosen.rejected:
                log.warning("%s: reference photo not used: %s: %s", user.name, rejected.label, rejected.reason)
            kept = [described[i] for i in chosen.kept]
            refs = stacked(kept, self.analyzer.extractor.name) if kept else None
            if refs is None and listing:
                log.warning(
                    "%s: no usable reference photo in %s (each must show the user alone)", user.name, user.references
                )
            self._folder[user.name] = (listing, refs)
            return refs


def _listing(account: Account, folder: Path) -> tuple:
    """(name, size, mtime_ns) of each non-temporary entry: what tells that the folder changed."""
    with acting_as(account):
        try:
            listing = []
            for entry in sorted(folder.iterdir()):
                if not is_temporary(entry.name):
                    st = entry.lstat()
                    listing.append((entry.name, st.st_size, st.st_mtime_ns))
            return tuple(listing)
        except OSError as e:
            log.warning("cannot list the reference folder %s", os_error_text(e, folder))
            return ()
