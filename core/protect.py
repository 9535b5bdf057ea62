"""Protect one photo: bytes in, verified clean bytes out (or a clear reason why not). Fail closed.

decode -> find and describe faces -> cloak each face (towards the user's target class, or away from its
own features for other people) -> strip metadata and encode -> decode the written bytes again, re-detect
and re-describe every cloaked face, and check it moved towards its target and away from its original by
the margins below. A face that fails is retried with the next stronger preset; a photo whose faces still
fail is not protected, and no bytes are returned for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .cloak.optimise import AWAY, TOWARDS, FaceTask, cloak
from .cloak.presets import STRONGER, preset
from .faces import Face, FaceAnalyzer
from .identity import single_out
from .photo.container import OutputOptions
from .photo.decode import DEFAULT_MAX_PIXELS, decode
from .photo.strip import strip_and_verify

#: Verification margins, in descriptor distance (dlib's same-person threshold is 0.6):
#: a targeted face must end at least TOWARDS_MARGIN closer to the target than it started and at least
#: MOVED_MARGIN away from its original descriptor; an untargeted face at least MOVED_MARGIN away.
TOWARDS_MARGIN = 0.15
MOVED_MARGIN = 0.25


@dataclass(frozen=True)
class ProtectRequest:
    """What to do with one photo. ``target``: descriptor of the user's target class (None: no targeted
    cloak, every face is cloaked away from itself). ``references``: the user's own descriptors; when given,
    only faces matching them get the targeted cloak and the others follow ``others`` ("away" or "leave").
    """

    target: np.ndarray | None = None
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

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


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


def _task(face: Face, role: str, target: np.ndarray | None) -> FaceTask:
    if role == "user":
        return FaceTask(face.transform, target, TOWARDS, origin=face.descriptor)
    return FaceTask(face.transform, face.descriptor, AWAY)


def _check(report: FaceReport, original: Face, written: np.ndarray, target: np.ndarray | None) -> None:
    """Fill in the written face's distances and the verdict."""
    report.moved = float(np.linalg.norm(written - original.descriptor))
    if report.role == "user":
        report.to_target_after = float(np.linalg.norm(written - target))
        gained = report.to_target_before - report.to_target_after
        report.verified = gained >= TOWARDS_MARGIN and report.moved >= MOVED_MARGIN
        if not report.verified:
            report.reason = (f"moved {report.moved:.2f} (needs {MOVED_MARGIN}), {gained:.2f} closer to the target "
                             f"(needs {TOWARDS_MARGIN})")
    else:
        report.verified = report.moved >= MOVED_MARGIN
        if not report.verified:
            report.reason = f"moved {report.moved:.2f} from its own features (needs {MOVED_MARGIN})"


def _verify_written(analyzer, data: bytes, request: ProtectRequest, faces: list[Face], reports: list[FaceReport],
                    label: str) -> None:
    """Decode the written bytes, re-detect and re-describe each cloaked face, and judge it.

    Both the tracker's view (the face re-detected in the written photo) and the original alignment must
    show the move; if the face is no longer detected at all, the original alignment alone is judged.
    """
    written = decode(data, max_pixels=request.max_pixels, label=label).rgb
    found = analyzer.analyse(written)
    own = analyzer.describe_chips(analyzer.chips(written, faces))
    for face, report, desc in zip(faces, reports, own):
        match = _match(face, found)
        views = [desc] + ([match.descriptor] if match is not None else [])
        least_moved = min(views, key=lambda d: np.linalg.norm(d - face.descriptor))
        _check(report, face, least_moved, request.target)


def protect(analyzer: FaceAnalyzer, data: bytes, request: ProtectRequest, label: str = "input") -> ProtectResult:
    """Protect the photo in ``data``; ``ok`` is True only if every cloak verified on the written bytes."""
    t0 = time.perf_counter()
    photo = decode(data, max_pixels=request.max_pixels, label=label)
    rgb = photo.rgb
    faces = analyzer.analyse(rgb)
    roles = _roles(faces, request, analyzer.extractor.match_threshold)
    reports = [FaceReport([round(float(v), 1) for v in f.box], r) for f, r in zip(faces, roles)]
    for rep, f in zip(reports, faces):
        if rep.role == "user":
            rep.to_target_before = float(np.linalg.norm(f.descriptor - request.target))

    todo = [i for i, r in enumerate(roles) if r != "left"]
    mode = request.mode
    while True:
        pixels = rgb
        if todo:
            tasks = [_task(faces[i], roles[i], request.target) for i in todo]
            result = cloak(rgb, tasks, analyzer.extractor, request.preset(mode), seed=request.seed)
            pixels = result.image
            for i, fr in zip(todo, result.faces):
                reports[i].mode, reports[i].dssim = mode, fr.dssim
        out = pixels if photo.pixels.ndim == 3 else pixels.mean(axis=2).round().astype(np.uint8)
        clean = strip_and_verify(photo, out, keep=request.keep, options=request.options)
        if not todo or not request.verify:
            failed = []
            break
        _verify_written(analyzer, clean.data, request, [faces[i] for i in todo], [reports[i] for i in todo], label)
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


__all__ = ["ProtectRequest", "ProtectResult", "FaceReport", "protect"]
