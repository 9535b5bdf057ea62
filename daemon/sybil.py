"""One Sybil image for one user (Fawkes section 7.2): the service's background job and ``cloakd sybil``.

A Sybil image is a candidate photo (a consenting person, a generated face: one face each) cloaked towards
the user's uncloaked features, to be uploaded under a second account (core/sybil.py says why it helps).
Both the service and the one-shot command make it through :func:`make_one`:

1. the candidates folder is listed with the user's rights; each photo is read as an outbound photo is
   (privileges.read_photo: no symbolic link out of the folder, no hard link to someone else's file);
2. a candidate is used once: ``STATE/users/NAME/sybil.json`` records, by the candidate's sha256, the image
   made from it or why it cannot be used (no face, two faces, looks like the user, failed verification),
   so a bad candidate is not tried again at every tick. The output name comes from the candidate's hash
   (``sybil-<12 hex>.jpg``): an output that already exists means the candidate was used, so a crash
   between writing the image and the record never makes a second image of it;
3. the unused candidates are read one at a time and each is described once, then ranked by its distance to
   where the images are pulled (core.sybil.sybil_target: the centroid of the references); the closest
   ``TRIES`` are cloaked one by one (core.sybil.make_sybil, the verified protect() pipeline, seeded by the
   candidate's hash) and the verified one that ends closest is kept. Only the bytes of the closest
   ``TRIES`` (and of the one being described) are held at a time, and at most ``RANK_AT_MOST`` usable
   candidates are described per run; the unusable ones and those whose cloak did not verify are recorded
   when the run ends;
4. it is written atomically and never over a file (deliver.write_new) into the output folder, with the
   user's rights, and then recorded.

``busy`` is asked between candidates: the service's photos come first, and a run stops (keeping the best
image made so far) as soon as one arrives. In the service, :class:`SybilJob` adds what belongs to running
in the background: the rate, waiting while photos are queued or outside the processing windows, one image
at a time for all users, lowered CPU priority, and each condition logged once rather than at every tick.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloakd.core.errors import CloakdError, os_error_text

from . import deliver
from .config import Config, Folder, UserConfig
from .files import replace_file
from .privileges import Account, Original, RefusedFile, acting_as, read_photo
from .state import user_dir
from .watch import walk

if TYPE_CHECKING:  # torch-heavy: imported where an image is made, so `cloakd status` stays light
    from cloakd.core.faces import FaceAnalyzer
    from cloakd.core.sybil import Candidate

    from .identity import UserReferences
    from .ledger import Ledger
    from .watch import Candidates

log = logging.getLogger("cloakd.sybil")

#: candidates cloaked for one image (the closest ones); the one that ends closest is kept
TRIES = 3
#: unused candidates described per run (in name order), so a large folder costs a bounded time and memory
RANK_AT_MOST = 20
OUTPUT_PREFIX = "sybil-"
#: the job's thread runs at this niceness while it makes an image (the workers' threads keep theirs)
NICENESS = 10
#: the job looks at least this often whether an image is due (the rate itself comes from the record)
MAX_TICK_SECONDS = 3600.0
MADE, REFUSED = "made", "refused"


def output_stem(sha256: str) -> str:
    """The output's name without extension: from the candidate's content, so it is the same after a crash."""
    return f"{OUTPUT_PREFIX}{sha256[:12]}"


class SybilRecord:
    """``STATE/users/NAME/sybil.json``: per candidate sha256, the image made from it or why it is unusable."""

    def __init__(self, state_dir: Path, user: str):
        self.state_dir, self.user = state_dir, user
        self.path = user_dir(state_dir, user) / "sybil.json"

    def load(self) -> dict[str, dict]:
        try:
            raw = json.loads(self.path.read_text())
            return dict(raw["candidates"])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CloakdError(
                f"{self.path}: unreadable Sybil record ({e}); fix: move it aside (images already "
                f"made are recognised again by their names in the output folder)"
            ) from None

    def save(self, entries: dict[str, dict]) -> None:
        user_dir(self.state_dir, self.user, create=True)
        replace_file(self.path, json.dumps({"candidates": entries}, indent=1, sort_keys=True).encode())


def made_entries(entries: dict[str, dict]) -> list[dict]:
    """The record's entries of candidates an image was made from."""
    return [e for e in entries.values() if e.get("state") == MADE]


def candidate_files(account: Account, folder: Path) -> list[Path]:
    """The candidate photos (every non-temporary file below ``folder``), as the user sees them."""
    with acting_as(account):
        if not os.path.isdir(folder):
            raise CloakdError(
                f"the Sybil candidates folder {folder} does not exist or {account.name} cannot "
                f"open it; fix: create it and put photos of one face each in it"
            )
    return [Path(p) for p in walk(account, Folder(folder))]


def _fingerprint(folder: Path, path: Path, st: os.stat_result) -> tuple:
    return str(path.relative_to(folder)), st.st_size, st.st_mtime_ns


def unrecorded(account: Account, folder: Path, entries: dict[str, dict]) -> list[Path]:
    """Candidates whose name, size and mtime no record has: the ones worth reading (a renamed used
    candidate is recognised later by its hash). Cheap: no file is read."""
    known = {(e.get("name"), e.get("size"), e.get("mtime_ns")) for e in entries.values()}
    out = []
    for path in candidate_files(account, folder):
        with acting_as(account):
            try:
                st = os.lstat(path)
            except OSError:
                continue
        if _fingerprint(folder, path, st) not in known:
            out.append(path)
    return out


@dataclass(frozen=True)
class Made:
    candidate: Path
    output: Path
    before: float | None  # the candidate's distance to where the image is pulled, before and after cloaking
    after: float | None

    def distances(self) -> str:
        return " -> ".join("?" if d is None else f"{d:.3f}" for d in (self.before, self.after))


@dataclass
class Outcome:
    """What one run did: the image made, or why none was (``exhausted``: no unused candidate is left)."""

    made: Made | None = None
    reason: str = ""
    exhausted: bool = False
    refused: list[tuple[str, str]] = field(default_factory=list)  # candidates not usable (label, why)


@dataclass
class _Run:
    """One run's state: the record's entries (saved after every change) and what was refused."""

    account: Account
    candidates: Path
    output: Path
    record: SybilRecord
    entries: dict[str, dict]
    outcome: Outcome = field(default_factory=Outcome)
    read: dict[str, Original] = field(default_factory=dict)  # candidates offered, by label (bytes let go)

    def hashes(self) -> set[str]:
        return {original.sha256 for original in self.read.values()}

    def note(self, original: Original, state: str, **values) -> None:
        name = str(original.path.relative_to(self.candidates))
        self.entries[original.sha256] = {
            "name": name,
            "size": original.size,
            "mtime_ns": original.mtime_ns,
            "state": state,
            "at": round(time.time(), 3),
            **values,
        }
        self.record.save(self.entries)
        if state == REFUSED:
            self.outcome.refused.append((str(original.path), values.get("reason", "")))


def make_one(
    analyzer: "FaceAnalyzer",
    account: Account,
    candidates: Path,
    output: Path,
    references: dict[str, np.ndarray],
    record: SybilRecord,
    *,
    mode: str = "mid",
    busy: Callable[[], str] = lambda: "",
) -> Outcome:
    """Make at most one Sybil image from the unused photos in ``candidates`` into ``output`` (steps above).

    ``references``: the user's uncloaked faces by extractor name (the primary's at least): the image is
    pulled towards the user in each of these spaces. ``busy`` returns why to stop now ("" to go on).
    CloakdError for a missing candidates folder or an unreadable record.
    """
    from cloakd.core.sybil import make_sybil, sybil_target

    run = _Run(account, candidates, output, record, record.load())
    primary = references[analyzer.extractor.name]
    result = make_sybil(
        analyzer,
        _unused_candidates(run),
        sybil_target(references),
        references=primary,
        tries=TRIES,
        at_most=RANK_AT_MOST,
        mode=mode,
        busy=busy,
    )
    for tried in result.tried:
        if tried.reason:  # no face, several, looks like the user, or its cloak did not verify
            run.note(run.read[tried.label], REFUSED, reason=tried.reason)
    if result.ok:
        run.outcome.made = _write(run, result, run.read[result.label])
    if result.stopped:
        run.outcome.reason = result.stopped
    elif not result.usable:
        run.outcome.exhausted = True
        run.outcome.reason = f"all Sybil candidates used: add more to {candidates}"
    elif not result.ok:
        run.outcome.reason = "no candidate tried could be made into a verified Sybil image"
    return run.outcome


def _unused_candidates(run: _Run) -> Iterator["Candidate"]:
    """The unused candidates, read one at a time as they are asked for, each seeded by its content's hash.
    A candidate whose output exists already is recorded as made instead; what was read is kept (without
    its bytes) in ``run.read`` under the candidate's label."""
    from cloakd.core.sybil import Candidate

    written = _written(run.account, run.output)
    for path in unrecorded(run.account, run.candidates, run.entries):
        original = _read(run, path)
        if original is None or original.sha256 in run.entries or original.sha256 in run.hashes():
            continue  # unreadable, used under another name, or the same content twice
        stem = output_stem(original.sha256)
        if stem in written:
            run.note(
                original,
                MADE,
                output=str(run.output / written[stem]),
                before=None,
                after=None,
                reason="found already written",
            )
            continue
        run.read[str(path)] = replace(original, data=b"")
        yield Candidate(str(path), original.data, seed=int(original.sha256[:8], 16))


def _read(run: _Run, path: Path) -> Original | None:
    try:
        return read_photo(run.account, path, [run.candidates], "Sybil candidates folder")
    except FileNotFoundError:
        return None  # removed since the listing
    except (RefusedFile, OSError) as e:  # not recorded: it cannot be hashed; said once by the caller
        why = str(e) if isinstance(e, RefusedFile) else os_error_text(e, path)
        run.outcome.refused.append((str(path), why))
        return None


def _written(account: Account, folder: Path) -> dict[str, str]:
    """Output stem -> file name of the Sybil images already in the output folder."""
    with acting_as(account):
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return {}
    return {os.path.splitext(n)[0]: n for n in names if n.startswith(OUTPUT_PREFIX)}


def _write(run: _Run, result, original: Original) -> Made:
    """Deliver the image (atomic, never over a file, as the user), then record it."""
    target = run.output / f"{output_stem(original.sha256)}{result.extension}"
    try:
        deliver.write_new(run.account, target, result.data, tag=output_stem(original.sha256))
        found = {}
    except FileExistsError:
        found = {"reason": "found already written"}
    run.note(
        original, MADE, output=str(target), before=round(result.start, 4), after=round(result.distance, 4), **found
    )
    return Made(original.path, target, result.start, result.distance)


# --- in the service ---------------------------------------------------------------------------------------


def photos_waiting(config: Config, ledger: "Ledger", candidates: "Candidates") -> str:
    """Why background work must wait now ("" when it may run): the user's own photos come first."""
    if not config.in_window(datetime.now()):
        return "outside the processing windows"
    waiting = ledger.waiting(list(config.users))
    if waiting:
        return f"{waiting} photos queued or in progress"
    if len(candidates):
        return "photos are arriving"
    return ""


def tick_seconds(per_day: float) -> float:
    """How often the job looks whether an image is due."""
    return min(86400.0 / per_day, MAX_TICK_SECONDS)


@contextmanager
def lowered_priority(niceness: int = NICENESS) -> Iterator[None]:
    """Run the body at ``niceness`` (this thread only, on Linux), restoring the thread's own after."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(before, niceness))
    except (OSError, AttributeError):  # not Linux: the body runs at the thread's priority
        before = None
    try:
        yield
    finally:
        if before is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, before)
            except OSError:  # raising priority again needs CAP_SYS_NICE: only rescans share this thread
                log.debug("the scheduler thread stays at niceness %d (raising it needs CAP_SYS_NICE)", niceness)


class SybilJob:
    """The service's Sybil job: called per user at each tick (daemon/scheduler.py), makes an image when one
    is due at the user's rate and nothing else needs the machine."""

    def __init__(
        self, analyzer: "FaceAnalyzer", references: "UserReferences", state_dir: Path, busy: Callable[[], str]
    ):
        self.analyzer, self.references, self.state_dir = analyzer, references, state_dir
        self._busy = busy
        self._stop = threading.Event()
        self._making = threading.Lock()  # one image at a time, for all users: the CPU is the workers' first
        self._said: dict[str, str] = {}  # per user, the last condition logged (said once, until it changes)
        self._told: set[tuple[str, str]] = set()  # unusable candidates already logged

    def busy(self) -> str:
        return "the service is stopping" if self._stop.is_set() else self._busy()

    def stop(self) -> None:
        self._stop.set()

    def in_hand(self) -> bool:
        return self._making.locked()

    def run(self, user: UserConfig, account: Account) -> Outcome | None:
        """One tick for ``user``; None when it did not try (not due, photos first, another image in hand)."""
        if user.sybil is None or not self._making.acquire(blocking=False):
            return None
        try:
            if self.busy():
                return None
            record = SybilRecord(self.state_dir, user.name)
            if not self._due(record, user.sybil.per_day):
                return None
            references = self.references.spaces(user, account)
            if references is None:
                self._say(
                    user.name,
                    logging.WARNING,
                    "no Sybil images: they are pulled towards the user's own "
                    f"features, and there are none yet; fix: 'cloakd enrol --user {user.name} PHOTOS' "
                    "(or a `references:` folder of photos of the user alone)",
                )
                return None
            with lowered_priority():
                outcome = make_one(
                    self.analyzer,
                    account,
                    user.sybil.candidates,
                    user.sybil.output,
                    references,
                    record,
                    mode=user.mode,
                    busy=self.busy,
                )
            self._report(user, outcome)
            return outcome
        except CloakdError as e:
            self._say(user.name, logging.ERROR, f"no Sybil image: {e}")
            return None
        except OSError as e:  # e.g. the output folder is full or not writable: nothing recorded, tried again
            self._say(user.name, logging.ERROR, f"no Sybil image: {os_error_text(e)}")
            return None
        finally:
            self._making.release()

    def _due(self, record: SybilRecord, per_day: float) -> bool:
        """Whether the rate allows an image now, from when the last one was made (survives restarts). A tenth
        of a tick early still counts, since ticks and runs do not start on the same millisecond."""
        times = [e.get("at", 0.0) for e in made_entries(record.load())]
        interval = 86400.0 / per_day
        return not times or time.time() - max(times) >= interval - 0.1 * tick_seconds(per_day)

    def _report(self, user: UserConfig, outcome: Outcome) -> None:
        for label, why in outcome.refused:
            if (label, why) not in self._told:
                self._told.add((label, why))
                log.warning("%s: Sybil candidate not used: %s: %s", user.name, label, why)
        if outcome.made is not None:
            m = outcome.made
            self._said.pop(user.name, None)
            log.info(
                "%s: Sybil image made: %s -> %s (distance to the user's features %s)",
                user.name,
                m.candidate,
                m.output,
                m.distances(),
            )
        elif outcome.exhausted:
            self._say(user.name, logging.WARNING, outcome.reason)
        else:
            log.info("%s: no Sybil image this time: %s", user.name, outcome.reason)

    def _say(self, user: str, level: int, message: str) -> None:
        if self._said.get(user) != message:
            self._said[user] = message
            log.log(level, "%s: %s", user, message)
