"""Check a photo that another machine protected, before it is delivered: protect()'s own checks on its
output, made again from the original alone, trusting nothing of the other machine's report.

The written bytes must carry nothing beyond the request's metadata allow-list, decode to the original's
size, and every face the request cloaks must have moved by protect()'s margins in every extractor the
requested mode is verified with. The faces are found here, in the original, and whose face is whose is
decided here from the request's references: a photo returned unchanged, or with a face left out, fails.
"""

from __future__ import annotations

from .errors import ProtectionError
from .faces import FaceAnalyzer
from .photo.decode import decode, open_image
from .photo.formats import detect
from .photo.verify import verify_clean
from .protect import FaceReport, ProtectRequest, _extractors, _roles, _verify_written


def recheck(
    analyzer: FaceAnalyzer, original: bytes, written: bytes, request: ProtectRequest, label: str = "input"
) -> int:
    """The number of faces checked; MetadataError or ProtectionError if ``written`` may not be delivered."""
    verify_clean(written, kept=request.keep)
    photo = decode(original, max_pixels=request.max_pixels, label=label).rgb
    size = open_image(written, detect(written, label=label)).size  # the header: a clean file has no orientation
    if size != (photo.shape[1], photo.shape[0]):
        raise ProtectionError(
            f"not protected: the returned photo is {size[0]}x{size[1]}, the original {photo.shape[1]}x{photo.shape[0]}"
        )
    faces = analyzer.analyse(photo)
    roles = _roles(faces, request, analyzer.extractor.match_threshold)
    todo = [i for i, role in enumerate(roles) if role != "left"]
    if not todo:
        return 0
    reports = [FaceReport([round(float(v), 1) for v in faces[i].box], roles[i]) for i in todo]
    _check_faces(analyzer, photo, [faces[i] for i in todo], reports, written, request, label)
    failed = [f"face {i + 1}: {report.reason}" for i, report in zip(todo, reports) if not report.verified]
    if failed:
        raise ProtectionError(
            f"not protected: the cloak made by a cluster worker did not verify here: {'; '.join(failed)}"
        )
    return len(todo)


def _check_faces(
    analyzer: FaceAnalyzer,
    photo,
    cloaked: list,
    reports: list[FaceReport],
    written: bytes,
    request: ProtectRequest,
    label: str,
) -> None:
    """protect()'s verification of ``cloaked`` (found in ``photo``) in ``written``, into ``reports``."""
    used = _extractors(analyzer, request.preset(request.mode))
    own = {k: analyzer.describe(photo, cloaked, analyzer.cloak_extractors[k]) for k in used if k != 0}
    own[0] = [f.descriptor for f in cloaked]
    origins = [{k: d[j] for k, d in own.items()} for j in range(len(cloaked))]
    _verify_written(analyzer, written, request, cloaked, origins, reports, label, used)
