"""Each user's persistent target class, stored in the state directory.

The target is chosen once (eq. 3, from the user's own descriptors) and then reused for every photo:
cloaks towards different targets would pull the user's features in different directions and weaken
each other. It changes only through an explicit ``cloakd target rotate``. The stored record keeps the
target's centroid itself, so a later change of the bank cannot silently move it.

Layout: ``STATE/users/NAME/target.json`` (daemon/state.py), written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloakd.core.errors import CloakdError
from cloakd.core.targets import DEFAULT_CANDIDATES, TargetBank, choose_target

from .files import replace_file
from .state import user_dir

FILE_NAME = "target.json"
ROTATE_WARNING = (
    "Rotating the target class weakens protection: photos already online were cloaked towards {old}, new "
    "ones will be cloaked towards {new}, and a tracker that collects both sees two directions that partly "
    "cancel. Rotate only if {old} has become unsuitable (e.g. it is known to the tracker)."
)


@dataclass(frozen=True)
class StoredTarget:
    name: str
    centroid: np.ndarray
    chosen_at: str
    min_distance: float
    bank: str
    extractor: str
    previous: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "centroid": [float(v) for v in self.centroid],
            "chosen_at": self.chosen_at,
            "min_distance": round(self.min_distance, 6),
            "bank": self.bank,
            "extractor": self.extractor,
            "previous": list(self.previous),
        }


def _seed(user: str, generation: int) -> int:
    """A reproducible per-user seed: the same references give the same choice on any machine."""
    return int.from_bytes(hashlib.sha256(f"cloakd-target:{user}:{generation}".encode()).digest()[:8], "little")


class TargetStore:
    def __init__(self, state_dir: Path | str, bank: TargetBank | None = None):
        self.state_dir = Path(state_dir)
        self._bank = bank

    @property
    def bank(self) -> TargetBank:
        if self._bank is None:
            self._bank = TargetBank.load()
        return self._bank

    def path(self, user: str, *, create: bool = False) -> Path:
        return user_dir(self.state_dir, user, create=create) / FILE_NAME

    def get(self, user: str) -> StoredTarget | None:
        p = self.path(user)
        try:
            raw = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CloakdError(
                f"{p}: unreadable target record ({e}); restore it from a backup or run "
                f"'cloakd target rotate --user {user}'"
            ) from None
        return StoredTarget(
            raw["name"],
            np.asarray(raw["centroid"], np.float32),
            raw["chosen_at"],
            float(raw["min_distance"]),
            raw["bank"],
            raw["extractor"],
            tuple(raw.get("previous", ())),
        )

    def choose(self, user: str, references: np.ndarray, *, k: int = DEFAULT_CANDIDATES) -> StoredTarget:
        """Choose and persist the user's target; refuses if one is already chosen (use rotate)."""
        current = self.get(user)
        if current is not None:
            raise CloakdError(
                f"user {user!r} already has target class {current.name!r} (chosen {current.chosen_at}); "
                "it is kept for good. Use 'cloakd target rotate' to change it deliberately"
            )
        return self._choose(user, references, k=k, previous=())

    def rotate(self, user: str, references: np.ndarray, *, k: int = DEFAULT_CANDIDATES) -> tuple[StoredTarget, str]:
        """Choose a new target (never a previous one); returns it with the warning to show."""
        current = self.get(user)
        previous = (current.previous + (current.name,)) if current else ()
        new = self._choose(user, references, k=k, previous=previous)
        return new, ROTATE_WARNING.format(old=current.name if current else "(none)", new=new.name)

    def _choose(self, user: str, references: np.ndarray, *, k: int, previous: tuple[str, ...]) -> StoredTarget:
        rng = np.random.default_rng(_seed(user, len(previous)))
        choice = choose_target(self.bank, references, k=k, rng=rng, exclude=previous)
        record = StoredTarget(
            name=choice.name,
            centroid=choice.centroid,
            chosen_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            min_distance=choice.min_distance,
            bank=self.bank.digest(),
            extractor=self.bank.extractor,
            previous=previous,
        )
        self._write(user, record)
        return record

    def _write(self, user: str, record: StoredTarget) -> None:
        replace_file(self.path(user, create=True), json.dumps(record.to_json(), indent=1).encode())
