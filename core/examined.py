"""A photo's faces as one machine found them, sent with the photo to the machine that cloaks it.

On a cluster (daemon/engine/cluster.py) the service finds and describes the faces of a photo before it
sends the photo out, and sends them with it (``ProtectRequest.examined``): the worker then cloaks those
faces instead of finding them again, and the service checks what comes back against the faces it found
itself (core/recheck.py). Finding the faces is done once per photo on the cluster instead of twice, and
the service's check trusts nothing of the worker's: not even which faces the photo has.

An :class:`Examined` belongs to one photo: its bytes' SHA-256 and decoded size are part of it, and
:meth:`Examined.of` refuses it for any other photo.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import CloakdError
from .faces import Face, FaceAnalyzer
from .photo.decode import DEFAULT_MAX_PIXELS, Photo, decode
from .plausible import Rejected


@dataclass(frozen=True)
class Examined:
    """What :meth:`FaceAnalyzer.examine` found in one photo: its faces (described, best score first) and
    the detections that do not count as faces; with the photo's SHA-256 and decoded (width, height)."""

    sha256: str
    size: tuple[int, int]
    faces: tuple[Face, ...]
    rejected: tuple[Rejected, ...]

    def of(self, data: bytes, photo: Photo, label: str = "input") -> tuple[list[Face], list[Rejected]]:
        """The faces and rejected detections for ``photo`` (decoded from ``data``); CloakdError if this
        examination is another photo's."""
        height, width = photo.rgb.shape[:2]
        if self.sha256 != digest(data):
            raise CloakdError(f"{label}: the faces sent with the photo were found in another photo")
        if self.size != (width, height):
            raise CloakdError(
                f"{label}: decoded as {width}x{height} here but as {self.size[0]}x{self.size[1]} where its faces "
                f"were found: the two machines' image libraries differ (install the same versions on both)"
            )
        return list(self.faces), list(self.rejected)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def examine_photo(
    analyzer: FaceAnalyzer, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, label: str = "input"
) -> Examined:
    """Decode ``data`` as protect() does and examine its faces; PhotoError and the like if it cannot be."""
    photo = decode(data, max_pixels=max_pixels, label=label)
    faces, rejected = analyzer.examine(photo.rgb)
    height, width = photo.rgb.shape[:2]
    return Examined(digest(data), (width, height), tuple(faces), tuple(rejected))
