"""Every error cloakd reports on purpose derives from CloakdError.

The CLI and the service print ``str(error)`` as one line; the class tells callers what kind of failure it
is (bad input, missing model, verification failure) so the service can decide to hold, retry or stop.
"""


class CloakdError(Exception):
    """Base class: a clear, specific, expected failure (never a bug)."""


class ModelMissingError(CloakdError):
    """A model file or the package that ships it is not installed."""


class ImageError(CloakdError):
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


class MetadataError(CloakdError):
    """A written file still carries metadata beyond the allow-list (fail closed)."""


class ProtectionError(CloakdError):
    """A cloak could not be computed or did not verify on the written file (fail closed)."""


class ModelCorruptError(ModelMissingError):
    """A model file is present but damaged or not the expected model; reinstalling its package fixes it."""


class MetadataPolicyError(CloakdError):
    """An allow-list names a tag that does not exist or that is never kept (GPS, Orientation, MakerNote...)."""
