"""WebP: RIFF chunk walker and writer.

A WebP file is a RIFF container: "VP8 " (lossy), "VP8L" (lossless) or the extended layout "VP8X" with
optional ALPH, ICCP, EXIF, "XMP " and animation chunks. Lossless inputs are written lossless again.
"""

from __future__ import annotations

import struct
from typing import Any

from .container import Block, ImageFormat, Kind, OutputOptions

_STRUCTURE = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"}
_META = {b"ICCP": Kind.ICC, b"EXIF": Kind.EXIF, b"XMP ": Kind.XMP}


def walk(data: bytes) -> list[Block]:
    """All chunks of a WebP file, plus anything after the RIFF size."""
    blocks = [Block(Kind.STRUCTURE, "RIFF header")]
    (riff_size,) = struct.unpack("<I", data[4:8])
    riff_end = min(8 + riff_size, len(data))
    if 8 + riff_size > len(data):
        blocks.append(Block(Kind.DAMAGED, f"file ends at byte {len(data)}, RIFF size says {8 + riff_size}"))
    pos = 12
    while pos + 8 <= riff_end:
        fourcc, size = struct.unpack("<4sI", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        name = fourcc.decode("latin-1")
        if pos + 8 + size > riff_end:
            blocks.append(Block(Kind.DAMAGED, f"chunk {name!r} at byte {pos} runs past the end of the file"))
            break
        if fourcc in _STRUCTURE:
            blocks.append(Block(Kind.STRUCTURE, name))
        elif fourcc in _META:
            if fourcc == b"EXIF" and body.startswith(b"Exif\x00\x00"):
                body = body[6:]  # some writers keep the JPEG APP1 prefix
            blocks.append(Block(_META[fourcc], f"RIFF {name.strip()}", body))
        else:
            blocks.append(Block(Kind.UNKNOWN, f"RIFF {name!r}", body))
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    if len(data) > riff_end and 8 + riff_size <= len(data):
        blocks.append(Block(Kind.TRAILER, f"{len(data) - riff_end} bytes after the RIFF container", data[riff_end:]))
    return blocks


class WebP(ImageFormat):
    name = "WEBP"
    pillow_id = "WEBP"
    extensions = (".webp",)
    has_grey = False  # WebP stores colour only; greyscale is written as RGB with R = G = B

    def sniff(self, head: bytes) -> bool:
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"

    def blocks(self, data: bytes) -> list[Block]:
        return walk(data)

    def is_lossless(self, blocks: list[Block]) -> bool:
        return any(b.kind is Kind.STRUCTURE and b.name == "VP8L" for b in blocks)

    def save_options(self, *, lossless: bool, options: OutputOptions) -> dict[str, Any]:
        # Lossless: quality is the compression effort. Lossy: VP8 is always 4:2:0; alpha stays lossless.
        if lossless:
            return {"lossless": True, "quality": 80, "method": 4}
        return {"quality": options.webp_quality, "method": 4, "alpha_quality": 100}
