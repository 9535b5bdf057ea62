"""Verify a written file (fail closed): parse the bytes again and refuse anything beyond the allow-list.

The check is independent of how the file was written: the format's own container walker lists every
block (JPEG segments and post-EOI data, PNG chunks, RIFF chunks, TIFF tags, HEIF boxes and items), and
every block that is not image structure is a finding, including blocks nobody recognises. An EXIF
block is allowed only when tags were asked to be kept, and then may hold exactly those tags.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import CloakdError, MetadataError
from .container import Kind
from .formats import detect
from .keep import unexpected_tags


def leftovers(data: bytes, *, kept: Iterable[str] = ()) -> list[str]:
    """What ``data`` carries beyond image structure and the ``kept`` EXIF tags, one phrase per finding."""
    kept = tuple(kept)
    try:
        fmt = detect(data, label="written file")
    except CloakdError as e:
        return [str(e)]
    blocks = fmt.blocks(data)
    exif_blocks = [b for b in blocks if b.kind is Kind.EXIF]
    problems: list[str] = []
    for block in blocks:
        if block.kind is Kind.STRUCTURE:
            continue
        if block.kind is Kind.EXIF and kept and len(exif_blocks) == 1:
            unexpected = unexpected_tags(block.payload, kept, structural=fmt.exif_structure_tags)
            problems += [f"{block.name}: {tag}" for tag in unexpected]
            continue
        problems.append(f"{block.kind.value} ({block.name})")
    return problems


def verify_clean(data: bytes, *, kept: Iterable[str] = ()) -> None:
    """Raise MetadataError naming every survivor if ``data`` is not clean (see leftovers)."""
    problems = leftovers(data, kept=kept)
    if problems:
        raise MetadataError(f"written file still carries metadata, so it was not delivered: {'; '.join(problems)}")
