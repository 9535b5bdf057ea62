"""Check a photo that another machine protected, before it is delivered: protect()'s own checks on its
output, made again from the original alone, trusting nothing of the other machine's report.

The written bytes must carry nothing beyond the request's metadata allow-list, decode to the original's
size, and every face the request cloaks must have moved by protect()'s margins in every extractor the
requested mode is verified with. The faces are the caller's own: those it found in the original before it
sent the photo out (``request.examined``, core/examined.py), or, without them, found here; whose face is
whose is decided here from the request's references. A photo returned unchanged, or with a face left out,
fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ProtectionError
from .faces import FaceAnalyzer
from .photo.decode import open_image
from .photo.formats import detect
from .photo.verify import verify_clean
from .protect import ProtectRequest, _extractors, _judge_written, _prepare, _summarise


@dataclass(frozen=True)
class Rechecked:
    """What the check found itself: the faces it checked, and the file name extension of the written format
    (the service names the delivered file by it, not by the other machine's report)."""

    faces: int
    extension: str


def recheck(
    analyzer: FaceAnalyzer, original: bytes, written: bytes, request: ProtectRequest, label: str = "input"
) -> Rechecked:
    """MetadataError or ProtectionError if ``written`` may not be delivered; else what was checked.
    ``request.examined``, if given, must be the caller's own examination of ``original``."""
    verify_clean(written, kept=request.keep)
    job = _prepare(analyzer, original, request, label)  # the original's faces, roles and own descriptors
    height, width = job.photo.rgb.shape[:2]
    fmt = detect(written, label=label)
    size = open_image(written, fmt).size  # the header: a clean file has no orientation
    if size != (width, height):
        raise ProtectionError(
            f"not protected: the returned photo is {size[0]}x{size[1]}, the original {width}x{height}"
        )
    if not job.todo:
        return Rechecked(0, fmt.extension)
    used = _extractors(analyzer, request.preset(request.mode))
    job.describe_own(used)
    reports = [job.reports[i] for i in job.todo]
    _judge_written(job, written, reports, used)  # protect()'s verification, whatever request.verify says
    for report in reports:
        _summarise(report, analyzer.extractor.name)
    failed = [f"face {i + 1}: {job.reports[i].reason}" for i in job.todo if not job.reports[i].verified]
    if failed:
        raise ProtectionError(
            f"not protected: the cloak made by a cluster worker did not verify here: {'; '.join(failed)}"
        )
    return Rechecked(len(job.todo), fmt.extension)
