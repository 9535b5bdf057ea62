"""Protect one photo: bytes in, verified clean bytes out (or a clear reason why not). Fail closed.

decode -> find and describe faces -> cloak each face (towards the user's target class, or away from its
own features for other people) against the primary extractor, or, for an ensemble preset, every
extractor of the analyser's ``cloak_extractors`` -> strip metadata and encode -> decode the written bytes
again, re-detect and re-describe every cloaked face with every one of those extractors, and check it moved
towards its target and away from its original by the margins below in each. A face that fails is retried
with the next stronger preset; a photo whose faces still fail is not protected, and no bytes are returned
for it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .cloak.optimise import AWAY, FaceTask, Goal, cloak
from .cloak.presets import STRONGER, CloakPreset, preset
from .faces import Face, FaceAnalyzer
from .identity import single_out
from .photo.container import OutputOptions
from .photo.decode import DEFAULT_MAX_PIXELS, decode
from .photo.strip import strip_and_verify
from .targets import TargetBank

#: Verification margins, in units of each extractor's identity gap (median different-person minus median
#: same-person distance; dlib's is 0.384, where they are 0.15 and 0.25 as they were in dlib's own units):
#: a targeted face must end at least TOWARDS_MARGIN closer to the target than it started and at least
#: MOVED_MARGIN away from its original descriptor; an untargeted face at least MOVED_MARGIN away. They
#: hold for every extractor the cloak is optimised against.
TOWARDS_MARGIN = 0.4
MOVED_MARGIN = 0.65


@dataclass(frozen=True)
class ProtectRequest:
    """What to do with one photo. ``target``: where the user's face should go, as descriptors by extractor
    name (e.g. the target class's centroid in each extractor's space; a bare array is the primary
    extractor's); an extractor without one pushes the face away from itself only. None: no targeted
    cloak, every face is cloaked away from itself. ``references``: the user's own (primary) descriptors;
    when given, only the face matching them gets the targeted cloak and the others follow ``others``
    ("away" or "leave").
    """

    target: Mapping[str, np.ndarray] | np.ndarray | None = None
    references: np.ndarray | None = None
    others: str = AWAY
    mode: str = "mid"
    keep: tuple[str, ...] = ()
    options: OutputOptions = OutputOptions()
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    verify: bool = True
    rho: float | None = None  # overrides every preset's budget (e.g. the paper's 0.007)
    steps: int | None = None  # overrides every preset's step count

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


def request_for_target(name: str | None, centroid: np.ndarray | None = None, *, bank: TargetBank | None = None,
                       **settings) -> ProtectRequest:
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
    return {k: (round(v, 4) if isinstance(v, float) else _rounded(v) if isinstance(v, dict) else v)
            for k, v in d.items()}


@dataclass
class ProtectResult:
    ok: bool
    data: bytes | None
    format: str
    extension: str
    faces: list[FaceReport] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0


def _match(face: Face, candidates: list[Face]) -> Face | None:
    """The re-detected face with the largest box overlap (IoU >= 0.4) with ``face``."""
    best, best_iou = None, 0.4
    for c in candidates:
        x1, y1 = np.maximum(face.box[:2], c.box[:2])
        x2, y2 = np.minimum(face.box[2:], c.box[2:])
        inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        union = np.prod(face.box[2:] - face.box[:2]) + np.prod(c.box[2:] - c.box[:2]) - inter
        iou = inter / union if union > 0 else 0.0
        if iou >= best_iou:
            best, best_iou = c, iou
    return best


def _roles(faces: list[Face], request: ProtectRequest, threshold: float) -> list[str]:
    """"user" for the face(s) that get the targeted cloak, "other" or "left" for the rest (policy).

    Without a target, nobody is the user. Without references, every face is taken to be the user's (the
    service's behaviour before enrolment). With references, at most the one face that matches them.
    """
    other = "other" if request.others == AWAY else "left"
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
    verified in: all of them for an ensemble preset, else the primary only."""
    return list(range(len(analyzer.cloak_extractors))) if settings.ensemble else [0]  # the primary is first


def _task(analyzer: FaceAnalyzer, image: np.ndarray, face: Face, role: str, targets: dict[str, np.ndarray],
          origins: dict[int, np.ndarray], used: list[int]) -> FaceTask:
    """One goal per extractor in ``used``: the face's chip in that extractor's alignment (and as other
    landmark models align it), its own descriptor there, and (for the user's face) the target there, if
    the target has one."""
    goals = []
    for k in used:
        extractor, origin = analyzer.cloak_extractors[k], origins[k]
        goals.append(Goal(analyzer.transform(face, extractor), origin, targets.get(extractor.name) if role == "user" else None,
                          analyzer.alternate_alignments(image, face, extractor)))
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
        why = (f"moved {check['moved']:.2f} (needs {MOVED_MARGIN * unit:.2f}), {gained:.2f} closer to the target "
               f"(needs {TOWARDS_MARGIN * unit:.2f})")
    check["verified"] = bool(ok)
    if not ok:
        check["reason"] = why
    return check


def _verify_written(analyzer: FaceAnalyzer, data: bytes, request: ProtectRequest, faces: list[Face],
                    origins: list[dict[int, np.ndarray]], reports: list[FaceReport], label: str,
                    used: list[int]) -> None:
    """Decode the written bytes, re-detect and re-describe each cloaked face with every extractor the
    cloak was optimised against (``used``), and judge it in each.

    Both the tracker's view (the face re-detected in the written photo) and the original alignment must
    show the move; if the face is no longer detected at all, the original alignment alone is judged.
    """
    written = decode(data, max_pixels=request.max_pixels, label=label).rgb
    found = analyzer.find(written)
    matches = [_match(face, found) for face in faces]
    targets = request.targets(analyzer.extractor.name)
    for k in used:
        extractor = analyzer.cloak_extractors[k]
        own = analyzer.describe(written, faces, extractor)
        matched = [m for m in matches if m is not None]
        again = dict(zip(map(id, matched), analyzer.describe(written, matched, extractor)))
        for face, report, desc, match, origin in zip(faces, reports, own, matches, origins):
            views = [desc] + ([again[id(match)]] if match is not None else [])
            least_moved = min(views, key=lambda d: np.linalg.norm(d - origin[k]))
            target = targets.get(extractor.name) if report.role == "user" else None
            report.checks[extractor.name] = _judge(extractor, report.role, origin[k], least_moved, target)
    for report in reports:
        primary = report.checks.get(analyzer.extractor.name, {})
        report.moved = primary.get("moved")
        report.to_target_after = primary.get("to_target_after")
        failed = [f"{name}: {c['reason']}" for name, c in report.checks.items() if not c["verified"]]
        report.verified = not failed
        report.reason = "; ".join(failed) if len(report.checks) > 1 else "".join(
            c.get("reason", "") for c in report.checks.values())


def protect(analyzer: FaceAnalyzer, data: bytes, request: ProtectRequest, label: str = "input") -> ProtectResult:
    """Protect the photo in ``data``; ``ok`` is True only if every cloak verified on the written bytes."""
    t0 = time.perf_counter()
    photo = decode(data, max_pixels=request.max_pixels, label=label)
    rgb = photo.rgb
    faces = analyzer.analyse(rgb)
    targets = request.targets(analyzer.extractor.name)
    roles = _roles(faces, request, analyzer.extractor.match_threshold)
    reports = [FaceReport([round(float(v), 1) for v in f.box], r) for f, r in zip(faces, roles)]
    for rep, f in zip(reports, faces):
        if rep.role == "user":
            rep.to_target_before = float(np.linalg.norm(f.descriptor - targets[analyzer.extractor.name]))

    todo = [i for i, r in enumerate(roles) if r != "left"]
    cloaked = [faces[i] for i in todo]
    # the cloaked faces' own descriptors by cloak extractor index, described once each as a mode first
    # needs that extractor (the primary's came with the faces)
    own = {0: [f.descriptor for f in cloaked]}
    mode = request.mode
    while True:
        pixels = rgb
        if todo:
            settings = request.preset(mode)
            used = _extractors(analyzer, settings)
            for k in used:
                if k not in own:
                    own[k] = list(analyzer.describe(rgb, cloaked, analyzer.cloak_extractors[k]))
            origins = [{k: d[j] for k, d in own.items()} for j in range(len(cloaked))]
            tasks = [_task(analyzer, rgb, faces[i], roles[i], targets, o, used) for i, o in zip(todo, origins)]
            result = cloak(rgb, tasks, [analyzer.cloak_extractors[k] for k in used], settings, seed=request.seed)
            pixels = result.image
            for i, fr in zip(todo, result.faces):
                reports[i].mode, reports[i].dssim = mode, fr.dssim
        out = pixels if photo.pixels.ndim == 3 else pixels.mean(axis=2).round().astype(np.uint8)
        clean = strip_and_verify(photo, out, keep=request.keep, options=request.options)
        if not todo or not request.verify:
            failed = []
            break
        todo_reports = [reports[i] for i in todo]
        for rep in todo_reports:
            rep.checks = {}
        _verify_written(analyzer, clean.data, request, cloaked, origins, todo_reports, label, used)
        failed = [i for i in todo if not reports[i].verified]
        if not failed or mode not in STRONGER:
            break
        mode = STRONGER[mode]  # every face again, from the original pixels, one preset stronger

    ok = not failed
    reason = "" if ok else "; ".join(f"face {i + 1}: {reports[i].reason}" for i in failed)
    return ProtectResult(
        ok=ok,
        data=clean.data if ok else None,
        format=clean.format,
        extension=clean.extension,
        faces=reports,
        reason=reason,
        seconds=time.perf_counter() - t0,
    )


__all__ = ["FaceReport", "ProtectRequest", "ProtectResult", "protect", "request_for_target"]
