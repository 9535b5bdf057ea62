"""Every error cloakd reports on purpose derives from CloakdError; :func:`os_error_text` words the system's.

The CLI prints ``str(error)`` as one line. In the service, the class decides what happens to a photo:

- :class:`PhotoError` (the photo itself: not an image, too large, its cloak or its metadata did not verify,
  a link cloakd will not follow): trying again cannot help, so the photo is held with the reason;
- :class:`ModelMissingError`: the installation is broken; the service does not start;
- any other CloakdError (the service's own state, e.g. an unreadable record) and OSError (an I/O error): the
  photo is retried later with back-off, and held only once ``retry.attempts`` are used up; a write that finds
  no space (a full disk or quota) is not retried photo by photo: the service pauses until space is freed.
"""

from __future__ import annotations

import errno


class CloakdError(Exception):
    """Base class: a clear, specific, expected failure (never a bug)."""


class PhotoError(CloakdError):
    """This photo cannot be protected, and trying again would not change that (the service holds it)."""


class ModelMissingError(CloakdError):
    """A model file or the package that ships it is not installed."""


class ModelCorruptError(ModelMissingError):
    """A model file is present but damaged or not the expected model; reinstalling its package fixes it."""


class ImageError(PhotoError):
    """The input is not a photo cloakd can process (bad, truncated, too large, unsupported)."""


class NotAnImageError(ImageError):
    """The bytes are not an image in any format cloakd knows."""


class UnsupportedFormatError(ImageError):
    """An image format cloakd recognises but does not process."""


class TruncatedImageError(ImageError):
    """The file ends before the image data does (e.g. an interrupted copy)."""


class ImageTooLargeError(ImageError):
    """The image exceeds the pixel limit (decompression-bomb protection)."""


class AnimatedImageError(ImageError):
    """The image has several frames; cloakd processes still photos only."""


class MetadataError(PhotoError):
    """A written file still carries metadata beyond the allow-list (fail closed)."""


class ProtectionError(PhotoError):
    """A cloak did not verify on the written file, even at the strongest mode (fail closed)."""


class MetadataPolicyError(CloakdError):
    """An allow-list names a tag that does not exist or that is never kept (GPS, Orientation, MakerNote...)."""


def os_error_text(error: OSError, path: object = None) -> str:
    """``FILE: reason`` for an OS error, in words: the file it names (else ``path``), the system's reason."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full"
    else:
        reason = error.strerror or str(error) or type(error).__name__
    where = error.filename if error.filename is not None else path
    return reason if where is None else f"{where}: {reason}"
