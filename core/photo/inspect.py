"""Say what a file would leak if shared as is: location, people and captions, camera and serial numbers,
dates, embedded previews, software, and any block nobody can read (which may hold anything).

Works on the container alone (no pixels are decoded), so it is fast and also reports on files too
damaged to decode. The same per-format walkers as verification list the blocks; exif_facts, xmp and
iptc read what the blocks say. A header that claims more pixels than cloakd's limit (a decompression
bomb) is reported as the problem that stops cloakd from processing the file.
"""

from __future__ import annotations

from ..errors import ImageTooLargeError, TruncatedImageError
from .colour import profile_name
from .container import Block, ImageFormat, Kind
from .decode import DEFAULT_MAX_PIXELS, bomb, open_image, too_large
from .exif_facts import exif_findings
from .formats import detect
from .iptc import iptc_findings
from .orient import orientation_of
from .report import OTHER, PEOPLE, PREVIEWS, Finding, Report, text_value
from .xmp import xmp_findings


def inspect(data: bytes, *, label: str = "input", max_pixels: int = DEFAULT_MAX_PIXELS) -> Report:
    """Report on ``data``; NotAnImageError/UnsupportedFormatError if it is not a supported image."""
    fmt = detect(data, label=label)
    blocks = fmt.blocks(data)
    findings: list[Finding] = []
    for block in blocks:
        found = _findings(fmt, block)
        if not found and block.kind is not Kind.STRUCTURE:
            # A carrier with nothing we recognise is still a carrier: say so rather than "clean".
            found = [
                Finding(
                    OTHER,
                    f"{block.kind.value} block",
                    f"{len(block.payload)} bytes, nothing identifying recognised",
                    block.name,
                )
            ]
        for finding in found:
            if not any(f.what == finding.what and f.value == finding.value for f in findings):
                findings.append(finding)
    try:
        size = _displayed_size(data, fmt, blocks, label)
        problem = too_large(label, *size, max_pixels) if size and size[0] * size[1] > max_pixels else ""
    except ImageTooLargeError as e:  # the header claims more pixels than Pillow reads (WebP)
        size, problem = None, str(e)
    expands = next((b.name for b in blocks if b.kind is Kind.BOMB), None)
    if expands and not problem:
        problem = bomb(label, expands)
    return Report(format=fmt.name, size=size, findings=tuple(findings), problem=problem)


def _findings(fmt: ImageFormat, block: Block) -> list[Finding]:
    kind, name, payload = block.kind, block.name, block.payload
    if kind is Kind.EXIF:
        return exif_findings(payload)
    if kind is Kind.XMP:
        return xmp_findings(payload)
    if kind is Kind.IPTC:
        return iptc_findings(payload)
    if kind is Kind.ICC:
        return [Finding(OTHER, "colour profile", profile_name(payload) or "unnamed ICC profile", name)]
    if kind is Kind.COMMENT:
        return [Finding(PEOPLE, "comment", text_value(payload), name)] if text_value(payload) else []
    if kind is Kind.TEXT:
        return [fmt.text_finding(block)]
    if kind is Kind.PREVIEW:
        return [Finding(PREVIEWS, "embedded image", f"{len(payload)} bytes" if payload else "present", name)]
    if kind is Kind.TRAILER:
        return [Finding(OTHER, "hidden data after the image", f"{len(payload)} bytes", name)]
    if kind is Kind.UNKNOWN:
        return [Finding(OTHER, "unrecognised block", f"{len(payload)} bytes", name)]
    if kind is Kind.DAMAGED:
        return [Finding(OTHER, "damaged or truncated file", name, "container")]
    if kind is Kind.BOMB:
        return [Finding(OTHER, "decompression bomb", name, "container")]
    return []


def _displayed_size(data: bytes, fmt: ImageFormat, blocks: list[Block], label: str) -> tuple[int, int] | None:
    """Width and height as a viewer shows them (EXIF orientations 5-8 swap them), from the header only."""
    try:
        with open_image(data, fmt, label) as image:
            width, height = image.size
    except (OSError, ValueError, TruncatedImageError):  # the last: a header Pillow warns is damaged (open_image)
        return None
    exif = next((b.payload for b in blocks if b.kind is Kind.EXIF), None)
    if fmt.applies_exif_orientation() and orientation_of(exif) >= 5:
        width, height = height, width
    return width, height
