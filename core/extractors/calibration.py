"""Each extractor's measured identity scale, shipped as ``core/data/calibration.json``.

The cloak counts every extractor's distances in its *identity gap* (median different-person minus median
same-person distance), so a margin or a loss stated once means the same in every extractor's space.
``scripts/calibrate_extractors.py`` measures the two medians and the best same-person threshold on
../shared/data/train (LFW identities used in no evaluation) and writes them here, together with the
target bank's descriptors in that extractor's space: adding an extractor is its module (plus a line in
the table of core/extractors/__init__.py), its weights, and one calibration run.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ModelCorruptError, ModelMissingError
from .weights import DATA

CALIBRATION = DATA / "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """One extractor's scale on ../shared/data/train: median distance between two photos of one person and
    of two different people, and the distance threshold that best tells them apart (maximum accuracy)."""

    same_person: float
    other_person: float
    match_threshold: float

    @property
    def identity_gap(self) -> float:
        return self.other_person - self.same_person


@functools.cache
def _table(path: Path) -> dict[str, Calibration]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelMissingError(f"{path} is missing: reinstall cloakd") from None
    except (OSError, ValueError) as e:
        raise ModelCorruptError(f"{path} cannot be read ({e}): reinstall cloakd") from None
    try:
        return {name: Calibration(**entry) for name, entry in raw["extractors"].items()}
    except (KeyError, TypeError) as e:
        raise ModelCorruptError(f"{path}: not a cloakd calibration table ({e}): reinstall cloakd") from None


def calibration(name: str, path: Path = CALIBRATION) -> Calibration:
    """Extractor ``name``'s calibration; ModelMissingError when it has none yet."""
    try:
        return _table(path)[name]
    except KeyError:
        raise ModelMissingError(
            f"extractor {name!r} is not calibrated ({path} has no entry for it): "
            f"run scripts/calibrate_extractors.py --extractors {name}"
        ) from None


def write_calibration(entries: dict[str, Calibration], about: dict, path: Path = CALIBRATION) -> None:
    """Add or replace ``entries`` in the table at ``path`` (the others are kept); ``about`` says how they were
    measured."""
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        table = {"extractors": {}}
    table.setdefault("about", {}).update(about)
    table["extractors"].update({k: {f: round(v, 4) for f, v in asdict(c).items()} for k, c in entries.items()})
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    _table.cache_clear()
