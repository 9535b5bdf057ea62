"""TIFF: directory walker and writer.

In a TIFF the picture's own directory (IFD0) also holds the EXIF-style tags (Make, Model, Artist...) and
the pointers to the EXIF and GPS directories, so the whole file is the EXIF payload: the walker reports one
EXIF block naming the non-structural tags, plus separate blocks for XMP, IPTC, Photoshop and ICC tags,
sub-images and further pages. Output is LZW-compressed (lossless, read by every TIFF reader), except when
allow-listed EXIF tags are written: Pillow's libtiff path cannot write an EXIF sub-directory, its own
writer can, uncompressed.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from ..errors import UnsupportedFormatError
from .container import Block, ImageFormat, Kind, OutputOptions
from .tiffdir import TiffReader

# Tags that describe the pixels (size, sampling, compression, strips/tiles, colour interpretation).
STRUCTURE_TAGS = frozenset(
    {
        254,
        255,
        256,
        257,
        258,
        259,
        262,
        263,
        266,
        273,
        277,
        278,
        279,
        280,
        281,
        282,
        283,
        284,
        296,
        317,
        318,
        319,
        320,
        322,
        323,
        324,
        325,
        338,
        339,
        340,
        341,
        347,
        512,
        513,
        514,
        515,
        517,
        518,
        519,
        520,
        521,
        529,
        530,
        531,
        532,
    }
)
_CARRIERS = {
    700: (Kind.XMP, "XMP tag"),
    33723: (Kind.IPTC, "IPTC tag"),
    34377: (Kind.IPTC, "Photoshop tag"),
    34675: (Kind.ICC, "ICC profile tag"),
    330: (Kind.PREVIEW, "sub-images (SubIFDs)"),
}
_NAMES = {
    270: "ImageDescription",
    271: "Make",
    272: "Model",
    274: "Orientation",
    305: "Software",
    306: "DateTime",
    315: "Artist",
    316: "HostComputer",
    33432: "Copyright",
    34665: "EXIF directory",
    34853: "GPS directory",
}


def is_camera_raw(data: bytes) -> bool:
    """TIFF-based raw files (DNG, CR2, NEF, ARW...): IFD0 is only a preview of the real picture."""
    if data[8:10] == b"CR":
        return True
    try:
        reader = TiffReader(data)
        ifd0 = reader.directory(reader.first_offset)
    except ValueError:
        return False
    subfile = ifd0.entries.get(254)
    reduced = bool(subfile and subfile.ints() and subfile.ints()[0] & 1)
    return reduced or 50706 in ifd0.entries  # NewSubfileType "reduced resolution", or DNGVersion


def walk(data: bytes) -> list[Block]:
    try:
        reader = TiffReader(data)
        chain = reader.chain()
    except ValueError as e:
        return [Block(Kind.DAMAGED, str(e))]
    if not chain:
        return [Block(Kind.DAMAGED, "no readable image directory")]
    ifd0 = chain[0]
    blocks = [Block(Kind.STRUCTURE, "IFD0 image")]
    tags = [t for t in sorted(ifd0.entries) if t not in STRUCTURE_TAGS and t not in _CARRIERS]
    if tags:
        names = ", ".join(_NAMES.get(t, f"tag {t}") for t in tags)
        blocks.append(Block(Kind.EXIF, f"IFD0 tags: {names}", data))
    for tag, (kind, name) in _CARRIERS.items():
        if tag in ifd0.entries:
            blocks.append(Block(kind, name, ifd0.entries[tag].raw))
    if len(chain) > 1:
        blocks.append(Block(Kind.PREVIEW, f"{len(chain) - 1} further image(s) (pages or thumbnails)"))
    return blocks


class Tiff(ImageFormat):
    name = "TIFF"
    pillow_id = "TIFF"
    extensions = (".tif", ".tiff")
    exif_structure_tags = STRUCTURE_TAGS  # the whole file is the EXIF structure: its pixel tags are allowed
    warnings_are_damage = True

    def check_supported(self, data: bytes, label: str) -> None:
        if is_camera_raw(data):
            raise UnsupportedFormatError(f"{label} is a camera raw file: export it as JPEG or TIFF first")

    def sniff(self, head: bytes) -> bool:
        return head[:4] in (b"II*\x00", b"MM\x00*")

    def blocks(self, data: bytes) -> list[Block]:
        return walk(data)

    def frame_count(self, image: Image.Image, blocks: list[Block]) -> int:
        try:
            return int(image.n_frames)  # Pillow reads every further directory to count the pages
        except TypeError as e:  # "Missing dimensions": a further directory without a size
            raise ValueError(f"a further image directory is damaged: {e}") from e

    def save_options(self, *, lossless: bool, options: OutputOptions) -> dict[str, Any]:
        return {"compression": "tiff_lzw"}

    def encode(self, image: Image.Image, *, exif: bytes | None, lossless: bool, options: OutputOptions) -> bytes:
        if not exif:
            return super().encode(image, exif=None, lossless=lossless, options=options)
        out = io.BytesIO()
        image.save(out, format=self.pillow_id, exif=exif)  # uncompressed: see the module docstring
        return out.getvalue()
