"""The one interface every supported image format implements, and the vocabulary its container walk uses.

Modelled in spirit on mat2's libmat2: one small class per format (jpeg.py, png.py, webp.py, heif.py, tiff.py)
knows how to recognise its magic bytes, how to list every block of its container (so verification and
inspection share one parser per format), and how to write a fresh file with Pillow; and it carries its own
rules (what it refuses despite its signature, which EXIF tags are its structure, what it is written as, what
its text blocks mean, which file name extensions it usually has), so no code elsewhere asks for a format by
name. formats.py holds the registry that picks the class from the content, never from a file name.
"""

from __future__ import annotations

import abc
import enum
import io
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from .report import OTHER, Finding, text_value


class Kind(enum.Enum):
    """What a block of a container carries. Everything except STRUCTURE is metadata (or may hide some)."""

    STRUCTURE = "image structure"  # dimensions, pixel data, compression tables: needed to show the picture
    EXIF = "EXIF"
    XMP = "XMP"
    IPTC = "IPTC/Photoshop"
    ICC = "ICC colour profile"
    COMMENT = "comment"
    TEXT = "text"
    PREVIEW = "embedded preview image"
    TRAILER = "data after the end of the image"
    UNKNOWN = "unrecognised block"
    DAMAGED = "damaged or truncated structure"
    BOMB = "compressed block that expands beyond the safe limit (a decompression bomb)"


@dataclass(frozen=True)
class Block:
    """One block of a container.

    ``name`` says where it sits in the format's own terms ("APP1 Exif", "tEXt Comment", "RIFF XMP").
    ``payload`` is the carried content, normalised per kind so readers need not know the container:
    EXIF -> TIFF structure (``II*``/``MM*``, no ``Exif\\0\\0`` prefix), XMP -> XML, IPTC -> Photoshop image
    resources (``8BIM``...) or bare IIM, ICC -> profile, COMMENT/TEXT -> text bytes, PREVIEW -> image bytes.
    """

    kind: Kind
    name: str
    payload: bytes = b""


@dataclass(frozen=True)
class OutputOptions:
    """How clean files are written. Defaults are the documented product policy (see encode.py).

    heic_as: "JPEG" (default: every browser and upload form takes it) or "HEIF" to keep HEIC as HEIC.
    jpeg_quality: 95 with 4:4:4 chroma (no colour bleeding at edges; larger files than 4:2:0).
    webp_quality: for lossy WebP inputs; lossless WebP inputs stay lossless.
    heif_quality: pillow-heif/x265 quality when heic_as="HEIF" (its default of 50 is visibly soft).
    """

    heic_as: str = "JPEG"
    jpeg_quality: int = 95
    webp_quality: int = 95
    heif_quality: int = 90

    def __post_init__(self) -> None:
        if self.heic_as not in ("JPEG", "HEIF"):
            raise ValueError(f"heic_as must be 'JPEG' or 'HEIF', not {self.heic_as!r}")
        for name in ("jpeg_quality", "webp_quality", "heif_quality"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be within 1..100")


class ImageFormat(abc.ABC):
    """One subclass per supported format; the registry in formats.py holds one instance each."""

    name: ClassVar[str]  # our name: "JPEG", "PNG", "WEBP", "HEIF", "TIFF"
    pillow_id: ClassVar[str]  # Pillow plugin id, so Image.open never falls through to another plugin
    #: the file name extensions of this format, the one cloakd writes first; when a folder is searched for
    #: photos they are only a first filter (discover.py): the content decides what a file is
    extensions: ClassVar[tuple[str, ...]]
    has_alpha: ClassVar[bool] = True
    has_grey: ClassVar[bool] = True
    #: EXIF tags that are image structure in this format, allowed in a written file's EXIF block
    exif_structure_tags: ClassVar[frozenset[int]] = frozenset()
    #: whether a warning of Pillow's while it reads the file means the picture is damaged (TIFF: the directory
    #: it warns about describes the pixels; PNG: the animation control) rather than metadata Pillow reads for
    #: itself (a JPEG's EXIF, for the DPI, and its MPO index), which cloakd reads on its own and never writes
    warnings_are_damage: ClassVar[bool] = False

    @property
    def extension(self) -> str:
        """The extension of the files cloakd writes in this format."""
        return self.extensions[0]

    @abc.abstractmethod
    def sniff(self, head: bytes) -> bool:
        """True if the first bytes are this format's signature."""

    @abc.abstractmethod
    def blocks(self, data: bytes) -> list[Block]:
        """Every block of the container, in file order. Never raises on damaged data: the damage is a block."""

    @abc.abstractmethod
    def save_options(self, *, lossless: bool, options: OutputOptions) -> dict[str, Any]:
        """Pillow save() keyword arguments for a fresh file of this format."""

    def check_supported(self, data: bytes, label: str) -> None:
        """Raise UnsupportedFormatError for a file with this format's signature that cloakd does not process."""

    def frame_count(self, image: Image.Image, blocks: list[Block]) -> int:
        """Frames of the picture (animation, pages); more than one is refused by decode.py."""
        return int(getattr(image, "n_frames", 1))

    def applies_exif_orientation(self) -> bool:
        """Whether the EXIF Orientation tag decides how the picture is displayed (not for HEIF: see heif.py)."""
        return True

    def high_depth_samples(self, image: Image.Image, data: bytes) -> np.ndarray | None:
        """Full-precision 16-bit samples (H x W x C, uint16) when Pillow would otherwise drop bits."""
        return None

    def is_lossless(self, blocks: list[Block]) -> bool:
        """Whether the source compression is lossless (decides lossy/lossless output where a format has both)."""
        return True

    def output_name(self, options: OutputOptions) -> str:
        """The name of the format a photo of this format is written in (its own, unless ``options`` say)."""
        return self.name

    def text_topic(self, key: str) -> str:
        """The topic of a text block named ``key`` (a report.py topic)."""
        return OTHER

    def text_finding(self, block: Block) -> Finding:
        """What a TEXT block of this format tells, for inspection. Its name is "<where> <key>" or "<key>"."""
        key = block.name.split(" ", 1)[1] if " " in block.name else block.name
        value = text_value(block.payload) or f"{len(block.payload)} bytes"
        return Finding(self.text_topic(key), f"text {key!r}", value, block.name)

    def encode(self, image: Image.Image, *, exif: bytes | None, lossless: bool, options: OutputOptions) -> bytes:
        """Write ``image`` (whose ``info`` is empty: nothing of the source travels along) as this format."""
        kwargs = self.save_options(lossless=lossless, options=options)
        if exif:
            kwargs["exif"] = exif
        out = io.BytesIO()
        image.save(out, format=self.pillow_id, **kwargs)
        return out.getvalue()


def first_payload(blocks: list[Block], kind: Kind) -> bytes | None:
    """Payload of the first block of ``kind`` (readers honour the first EXIF/ICC block, as Pillow does)."""
    return next((b.payload for b in blocks if b.kind is kind and b.payload), None)
