"""Protect one photo: bytes in, verified clean bytes out (or a clear reason why not). Fail closed.

decode -> find and describe faces (only detections that pass the plausibility check of core/plausible.py
count as faces: the others are reported, never cloaked) -> cloak each face (towards the user's target
class, or away from its own features for other people) against the primary extractor, or, for an ensemble
preset, every extractor of the analyser's ``cloak_extractors`` -> strip metadata and encode -> decode the
written bytes again, re-detect and re-describe every cloaked face with every one of those extractors, and
check it moved towards its target and away from its original by the margins below in each. A face that
fails is retried with the next stronger preset; a photo whose faces still fail is not protected, and no
bytes are returned for it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .cloak.optimise import FaceTask, Goal, cloak
from .cloak.presets import STRONGER, CloakPreset, preset
from .errors import CloakdError
from .examined import Examined
from .faces import Face, FaceAnalyzer
from .identity import Others, single_out
from .photo.container import OutputOptions
from .photo.decode import DEFAULT_MAX_PIXELS, Photo, decode
from .photo.strip import CleanPhoto, strip_and_verify
from .plausible import Rejected
from .targets import TargetBank

#: Verification margins, in units of each extractor's identity gap (median different-person minus median
#: same-person distance; dlib's is 0.384, where they are 0.15 and 0.25 as they were in dlib's own units):
#: a targeted face must end at least TOWARDS_MARGIN closer to the target than it started and at least
#: MOVED_MARGIN away from its original descriptor; an untargeted face at least MOVED_MARGIN away. They
#: hold for every extractor the cloak is optimised against.
TOWARDS_MARGIN = 0.4
MOVED_MARGIN = 0.65

#: the role of a face that is not the user's, by the ``others`` policy: "other" is cloaked away from itself,
#: "left" is not cloaked
ROLE_OF_OTHERS = {Others.AWAY: "other", Others.LEAVE: "left"}


@dataclass(frozen=True)
class ProtectRequest:
    """What to do with one photo. ``target``: where the user's face should go, as descriptors by extractor
    name (e.g. the target class's centroid in each extractor's space; a bare array is the primary
    extractor's); an extractor without one pushes the face away from itself only. None: no targeted
    cloak, every face is cloaked away from itself. ``references``: the user's own (primary) descriptors;
    when given, only the face matching them gets the targeted cloak and the others follow ``others``.
    """

    target: Mapping[str, np.ndarray] | np.ndarray | None = None
    references: np.ndarray | None = None
    others: Others = Others.AWAY
    mode: str = "mid"
    keep: tuple[str, ...] = ()
    options: OutputOptions = OutputOptions()
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    verify: bool = True
    rho: float | None = None  # overrides every preset's budget (e.g. the paper's 0.007)
    steps: int | None = None  # overrides every preset's step count
    #: the photo's faces as the sender found them (core/examined.py): cloaked and checked instead of
    #: finding them again; None: protect() finds them
    examined: Examined | None = None

    def preset(self, mode: str):
        return preset(mode).with_overrides(rho=self.rho, steps=self.steps)

    def targets(self, primary: str) -> dict[str, np.ndarray]:
        """The target by extractor name ({} without a target)."""
        if self.target is None:
            return {}
        if isinstance(self.target, Mapping):
            if primary not in self.target:
                raise ValueError(f"the target has no descriptor for the primary extractor {primary!r}")
            return {k: np.asarray(v, np.float32) for k, v in self.target.items()}
        return {primary: np.asarray(self.target, np.float32)}


def request_for_target(
    name: str | None, centroid: np.ndarray | None = None, *, bank: TargetBank | None = None, **settings
) -> ProtectRequest:
    """The request that cloaks towards the target class ``name`` in every extractor's space ``bank`` holds
    (default: the bank shipped with cloakd). ``centroid``: the primary centroid a user's target was stored
    with, which wins over the bank's (a changed bank cannot move a chosen target); None: the bank's own.
    ``name`` None: no target (every face is cloaked away from itself). ``settings``: the request's other
    fields (references, others, mode, keep, options, seed, ...)."""
    if name is None:
        return ProtectRequest(**settings)
    bank = TargetBank.load() if bank is None else bank
    return ProtectRequest(target=bank.point(name, centroid), **settings)


@dataclass
class FaceReport:
    box: list[float]
    role: str  # "user", "other", "left" (not cloaked by policy)
    score: float = 0.0  # the detector's (MTCNN ONet's) face probability
    mode: str = ""
    dssim: float = 0.0
    to_target_before: float | None = None
    to_target_after: float | None = None
    moved: float | None = None  # distance between the original and the written face's descriptor
    verified: bool = False
    reason: str = ""
    #: per extractor the cloak was optimised against: its distances (as above, in its own units) and verdict
    checks: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return _rounded(self.__dict__)


def _rounded(d: dict) -> dict:
    return {
        k: (round(v, 4) if isinstance(v, float) else _rounded(v) if isinstance(v, dict) else v) for k, v in d.items()
    }


@dataclass
class ProtectResult:
    ok: bool
    data: bytes | None
    format: str
    extension: str
    faces: list[FaceReport] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    #: detections that did not count as faces (core/plausible.py): reported, never cloaked
    rejected: list[Rejected] = field(default_factory=list)


def _match(face: Face, candidates: list[Face]) -> int | None:
    """The index of the re-detected face with the largest box overlap (IoU >= 0.4) with ``face``."""
    best, best_iou = None, 0.4
    for i, c in enumerate(candidates):
        x1, y1 = np.maximum(face.box[:2], c.box[:2])
        x2, y2 = np.minimum(face.box[2:], c.box[2:])
        inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        union = np.prod(face.box[2:] - face.box[:2]) + np.prod(c.box[2:] - c.box[:2]) - inter
        iou = inter / union if union > 0 else 0.0
        if iou >= best_iou:
            best, best_iou = i, iou
    return best


def _roles(faces: list[Face], request: ProtectRequest, threshold: float) -> list[str]:
    """ "user" for the face(s) that get the targeted cloak, "other" or "left" for the rest (policy).

    Without a target, nobody is the user. Without references, every face is taken to be the user's (the
    service's behaviour before enrolment). With references, at most the one face that matches them.
    """
    other = ROLE_OF_OTHERS[Others(request.others)]
    if request.target is None:
        return [other] * len(faces)
    if request.references is None or len(request.references) == 0:
        return ["user"] * len(faces)
    roles = [other] * len(faces)
    if faces:
        user = single_out(np.stack([f.descriptor for f in faces]), request.references, threshold)
        if user is not None:
            roles[user] = "user"
    return roles


def _extractors(analyzer: FaceAnalyzer, settings: CloakPreset) -> list[int]:
    """Which of the analyser's cloak extractors (indices) a preset's cloak is optimised against and
    verified in: those the preset names, in the analyser's order (the primary first)."""
    loaded = [e.name for e in analyzer.cloak_extractors]
    missing = [n for n in settings.extractors if n not in loaded]
    if missing:
        raise CloakdError(f"mode {settings.name} needs the extractors {', '.join(missing)}, which were not loaded")
    return [k for k, name in enumerate(loaded) if name in settings.extractors]


def _task(
    analyzer: FaceAnalyzer,
    image: np.ndarray,
    face: Face,
    role: str,
    targets: dict[str, np.ndarray],
    origins: dict[int, np.ndarray],
    used: list[int],
) -> FaceTask:
    """One goal per extractor in ``used``: the face's chip in that extractor's alignment (and as other
    landmark models align it), its own descriptor there, and (for the user's face) the target there, if
    the target has one."""
    goals = []
    for k in used:
        extractor, origin = analyzer.cloak_extractors[k], origins[k]
        goals.append(
            Goal(
                analyzer.transform(face, extractor),
                origin,
                targets.get(extractor.name) if role == "user" else None,
                analyzer.alternate_alignments(image, face, extractor),
            )
        )
    return FaceTask(goals)


def _judge(extractor, role: str, original: np.ndarray, written: np.ndarray, target: np.ndarray | None) -> dict:
    """One extractor's verdict on one written face, distances in its own units."""
    unit = extractor.identity_gap
    check = {"moved": float(np.linalg.norm(written - original))}
    ok = check["moved"] >= MOVED_MARGIN * unit
    why = f"moved {check['moved']:.2f} from its own features (needs {MOVED_MARGIN * unit:.2f})"
    if role == "user" and target is not None:
        check["to_target_before"] = float(np.linalg.norm(original - target))
        check["to_target_after"] = float(np.linalg.norm(written - target))
        gained = check["to_target_before"] - check["to_target_after"]
        ok = ok and gained >= TOWARDS_MARGIN * unit
        why = (
            f"moved {check['moved']:.2f} (needs {MOVED_MARGIN * unit:.2f}), {gained:.2f} closer to the target "
            f"(needs {TOWARDS_MARGIN * unit:.2f})"
        )
    check["verified"] = bool(ok)
    if not ok:
        check["reason"] = why
    return check


def _judge_written(job: _Job, data: bytes, reports: list[FaceReport], used: list[int]) -> None:
    """Decode the written bytes, re-detect and re-describe each cloaked face with every extractor the
    cloak was optimised against (``used``), and judge it in each (into ``reports``, one per cloaked face).

    Both the tracker's view (the face re-detected where it was, perhaps aligned a little differently) and
    the original alignment must show the move (the least moved of them is judged, towards the target too);
    and no face detected anywhere in the written photo may still carry the face's own features (a face
    moved, pasted or left elsewhere; the same person twice in one photo must be cloaked twice).
    """
    analyzer, faces = job.analyzer, job.cloaked
    written = decode(data, max_pixels=job.request.max_pixels, label=job.label).rgb
    found = analyzer.find(written)
    matches = [_match(face, found) for face in faces]
    origins = job.origins()
    for k in used:
        extractor = analyzer.cloak_extractors[k]
        described = analyzer.describe(written, faces + found, extractor)  # one batch: cheaper than two
        own, detected = described[: len(faces)], list(described[len(faces) :])
        for report, desc, match, origin in zip(reports, own, matches, origins):
            views = [desc] + ([detected[match]] if match is not None else [])
            least_moved = min(views, key=lambda d: np.linalg.norm(d - origin[k]))
            target = job.targets.get(extractor.name) if report.role == "user" else None
            check = _judge(extractor, report.role, origin[k], least_moved, target)
            report.checks[extractor.name] = _nowhere_else(extractor, check, origin[k], detected)


def _nowhere_else(extractor, check: dict, original: np.ndarray, detected: list[np.ndarray]) -> dict:
    """``check`` failed if a face detected in the written photo is still within the moved margin of the
    face's ``original`` descriptor."""
    if not detected:
        return check
    nearest = min(float(np.linalg.norm(d - original)) for d in detected)
    check["nearest_in_photo"] = nearest
    need = MOVED_MARGIN * extractor.identity_gap
    if nearest < need and check["verified"]:  # a check that failed already says why
        check["verified"] = False
        check["reason"] = f"a face in the written photo is {nearest:.2f} from its own features (needs {need:.2f})"
    return check


def _summarise(report: FaceReport, primary: str) -> None:
    """A face's verdict from its extractors' checks; its distances are the primary extractor's."""
    checks = report.checks.get(primary, {})
    report.moved = checks.get("moved")
    report.to_target_after = checks.get("to_target_after")
    failed = [f"{name}: {c['reason']}" for name, c in report.checks.items() if not c["verified"]]
    report.verified = not failed
    report.reason = (
        "; ".join(failed) if len(report.checks) > 1 else "".join(c.get("reason", "") for c in report.checks.values())
    )


@dataclass
class _Job:
    """One photo on its way through :func:`protect`: the decoded photo, its faces with their roles and
    reports, the faces to cloak (``todo``, indices into ``faces``), and their own descriptors by cloak
    extractor index, each extractor's described once, when a mode first needs it (the primary's came with
    the faces)."""

    analyzer: FaceAnalyzer
    request: ProtectRequest
    label: str
    photo: Photo
    faces: list[Face]
    roles: list[str]
    reports: list[FaceReport]
    targets: dict[str, np.ndarray]
    todo: list[int]
    own: dict[int, list[np.ndarray]]
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def cloaked(self) -> list[Face]:
        return [self.faces[i] for i in self.todo]

    def describe_own(self, used: list[int]) -> None:
        """Describe the cloaked faces by each extractor of ``used`` that has not described them yet."""
        for k in used:
            if k not in self.own:
                extractor = self.analyzer.cloak_extractors[k]
                self.own[k] = list(self.analyzer.describe(self.photo.rgb, self.cloaked, extractor))

    def origins(self) -> list[dict[int, np.ndarray]]:
        """Per cloaked face, its own descriptors by cloak extractor index (those described so far)."""
        return [{k: d[j] for k, d in self.own.items()} for j in range(len(self.todo))]


def _prepare(analyzer: FaceAnalyzer, data: bytes, request: ProtectRequest, label: str) -> _Job:
    """Decode the photo, find and describe its faces, and give each its role and report."""
    photo = decode(data, max_pixels=request.max_pixels, label=label)
    if request.examined is None:
        faces, rejected = analyzer.examine(photo.rgb)
    else:
        faces, rejected = request.examined.of(data, photo, label)
    primary = analyzer.extractor.name
    targets = request.targets(primary)
    roles = _roles(faces, request, analyzer.extractor.match_threshold)
    reports = [FaceReport([round(float(v), 1) for v in f.box], r, float(f.score)) for f, r in zip(faces, roles)]
    for rep, f in zip(reports, faces):
        if rep.role == "user":
            rep.to_target_before = float(np.linalg.norm(f.descriptor - targets[primary]))
    todo = [i for i, r in enumerate(roles) if r != "left"]
    return _Job(
        analyzer,
        request,
        label,
        photo,
        faces,
        roles,
        reports,
        targets,
        todo,
        own={0: [faces[i].descriptor for i in todo]},
        rejected=rejected,
    )


def _cloak_faces(job: _Job, mode: str) -> tuple[np.ndarray, list[int]]:
    """The photo's pixels with every face of ``job.todo`` cloaked by ``mode``'s preset, from the original
    pixels, and the cloak extractors (indices) it was optimised against."""
    analyzer, rgb = job.analyzer, job.photo.rgb
    settings = job.request.preset(mode)
    used = _extractors(analyzer, settings)
    job.describe_own(used)
    tasks = [
        _task(analyzer, rgb, job.faces[i], job.roles[i], job.targets, o, used) for i, o in zip(job.todo, job.origins())
    ]
    result = cloak(rgb, tasks, [analyzer.cloak_extractors[k] for k in used], settings, seed=job.request.seed)
    for i, fr in zip(job.todo, result.faces):
        job.reports[i].mode, job.reports[i].dssim = mode, fr.dssim
    return result.image, used


def _attempt(job: _Job, mode: str) -> tuple[CleanPhoto, list[int]]:
    """One attempt: the faces cloaked with ``mode``'s preset (none to cloak: the photo as it is), then
    stripped and encoded; with the cloak extractors (indices) used."""
    pixels, used = (job.photo.rgb, []) if not job.todo else _cloak_faces(job, mode)
    out = pixels if job.photo.pixels.ndim == 3 else pixels.mean(axis=2).round().astype(np.uint8)
    return strip_and_verify(job.photo, out, keep=job.request.keep, options=job.request.options), used


def _verify(job: _Job, data: bytes, used: list[int]) -> list[int]:
    """The faces (indices) whose cloak did not verify on the written ``data``; none when no face was
    cloaked or the request does not verify."""
    if not job.todo or not job.request.verify:
        return []
    reports = [job.reports[i] for i in job.todo]
    for report in reports:
        report.checks = {}
    _judge_written(job, data, reports, used)
    for report in reports:
        _summarise(report, job.analyzer.extractor.name)
    return [i for i in job.todo if not job.reports[i].verified]


def protect(analyzer: FaceAnalyzer, data: bytes, request: ProtectRequest, label: str = "input") -> ProtectResult:
    """Protect the photo in ``data``; ``ok`` is True only if every cloak verified on the written bytes.

    Prepare (decode, faces, roles), then attempts: cloak and write with the request's mode, verify the
    written bytes; while a face fails, every face again from the original pixels with the next stronger
    preset (STRONGER), until there is none.
    """
    t0 = time.perf_counter()
    job = _prepare(analyzer, data, request, label)
    mode = request.mode
    while True:
        clean, used = _attempt(job, mode)
        failed = _verify(job, clean.data, used)
        if not failed or mode not in STRONGER:
            break
        mode = STRONGER[mode]
    reason = "; ".join(f"face {i + 1}: {job.reports[i].reason}" for i in failed)
    return ProtectResult(
        ok=not failed,
        data=None if failed else clean.data,
        format=clean.format,
        extension=clean.extension,
        faces=job.reports,
        reason=reason,
        seconds=time.perf_counter() - t0,
        rejected=job.rejected,
    )


__all__ = ["FaceReport", "ProtectRequest", "ProtectResult", "protect", "request_for_target"]
