"""HEIF/HEIC: ISO-BMFF box walker, decoder registration and (optional) writer.

A HEIF file is a tree of boxes. The picture is the primary item (often a grid of 512 x 512 HEVC tiles);
metadata lives in *other items* of the same file: an "Exif" item, a "mime" item holding XMP, thumbnail
items ("thmb" references), auxiliary images (depth and HDR gain maps), plus an ICC profile in a "colr"
property. The walker lists items by role so verification fails on any item that is not the picture.

Decoding goes through pillow-heif (libheif). Its register_heif_opener() adds the HEIF plugin to Pillow's
global plugin registry: we call it once, when this module is imported (idempotent; the one piece of
global state the photo engine touches, because Pillow offers no per-call plugin list for third parties).
libheif applies the container's rotation/mirror properties (irot/imir) while decoding; the EXIF
Orientation inside a HEIF is informative only (HEIF spec), so decode.py must not apply it again.
Only the primary image is processed; other top-level images of a collection are dropped. Image
sequences (a "moov" track, .heics) count as animated.

Output (OutputOptions.heic_as="HEIF"): pillow-heif writes ftyp, meta (hdlr, pinf, iloc, iinf, iprp with an
"nclx" colour box) and mdat; EXIF/XMP items only if asked to, which verification checks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pillow_heif
from PIL import Image

from .container import Block, ImageFormat, Kind, OutputOptions

pillow_heif.register_heif_opener()

_HEIF_BRANDS = {b"mif1", b"msf1", b"mif2", b"miaf"}
_IMAGE_TYPES = {b"hvc1", b"grid", b"iden", b"iovl", b"av01", b"jpeg", b"unci", b"tmap", b"vvc1", b"j2k1"}
_HEVC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
#: extents per item, as libheif's security limit: more is damage (and would cost memory: see _Meta._iloc)
_MAX_EXTENTS = 32
_ALPHA_AUX = (b"urn:mpeg:hevc:2015:auxid:1", b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha")
# Item properties that describe how to decode and show pixels (codec configuration, size, bit depth,
# colour, crop, rotation, mirror, aux type, layer selection, light levels, scaling, tiling).
_PIXEL_PROPERTIES = {
    b"hvcC",
    b"av1C",
    b"vvcC",
    b"jpgC",
    b"j2kH",
    b"uncC",
    b"cmpd",
    b"ispe",
    b"pixi",
    b"colr",
    b"clap",
    b"irot",
    b"imir",
    b"auxC",
    b"rloc",
    b"lsel",
    b"a1op",
    b"a1lx",
    b"pasp",
    b"clli",
    b"mdcv",
    b"cclv",
    b"amve",
    b"iscl",
    b"tilC",
    b"reve",
}


def ftyp_brands(head: bytes) -> set[bytes]:
    """Major and compatible brands of a leading "ftyp" box (empty set if there is none)."""
    if len(head) < 16 or head[4:8] != b"ftyp":
        return set()
    size = min(struct.unpack(">I", head[:4])[0], len(head))
    return {head[8:12]} | {head[i : i + 4] for i in range(16, size - 3, 4)}


def _boxes(data: bytes, start: int, end: int, errors: list[str]) -> list[tuple[bytes, int, int]]:
    """(type, body start, body end) of the boxes in data[start:end]."""
    out = []
    pos = start
    while pos + 8 <= end:
        size, btype = struct.unpack(">I4s", data[pos : pos + 8])
        head = 8
        if size == 1 and pos + 16 <= end:
            size, head = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            errors.append(f"box {btype!r} at byte {pos} runs past its container")
            break
        out.append((btype, pos + head, pos + size))
        pos += size
    return out


@dataclass
class _Item:
    type: bytes = b""
    content_type: bytes = b""
    extents: list[tuple[int, int, int]] = field(default_factory=list)  # (construction method, offset, length)
    refs: dict[bytes, list[int]] = field(default_factory=dict)  # reference type -> items this one points to
    aux_type: bytes = b""
    icc: bytes = b""


class _Meta:
    """The parts of a "meta" box that say which item is what and where its bytes are."""

    def __init__(self, data: bytes, start: int, end: int, errors: list[str]) -> None:
        self.data = data
        self.items: dict[int, _Item] = {}
        self.primary = 0
        self.idat = b""
        self.extra: list[Block] = []
        self.errors = errors
        try:
            self._parse(start + 4, end)  # meta is a full box: skip version and flags
        except (struct.error, IndexError):
            errors.append("meta box is damaged")

    def item(self, item_id: int) -> _Item:
        return self.items.setdefault(item_id, _Item())

    def _parse(self, start: int, end: int) -> None:
        d = self.data
        for btype, s, e in _boxes(d, start, end, self.errors):
            version = d[s] if e > s else 0
            if btype == b"pitm":
                self.primary = struct.unpack(">H" if version == 0 else ">I", d[s + 4 : s + (6 if version == 0 else 8)])[
                    0
                ]
            elif btype == b"iinf":
                first = s + (6 if version == 0 else 8)
                for ib, bs, be in _boxes(d, first, e, self.errors):
                    if ib == b"infe":
                        self._infe(bs, be)
            elif btype == b"iloc":
                self._iloc(s, e)
            elif btype == b"iref":
                self._iref(s, e, version)
            elif btype == b"iprp":
                self._iprp(s, e)
            elif btype == b"idat":
                self.idat = d[s:e]
            else:
                self.extra.append(self._other(btype, s, e))

    def _other(self, btype: bytes, s: int, e: int) -> Block:
        """A box of meta that is not about items: the handler's name, structure, XMP, or unknown."""
        d = self.data
        if btype == b"hdlr":
            name = d[s + 24 : e].split(b"\x00")[0]
            return Block(Kind.TEXT, "hdlr name", name) if name else Block(Kind.STRUCTURE, "hdlr")
        if btype in (b"dinf", b"grpl", b"pinf"):
            return Block(Kind.STRUCTURE, btype.decode("latin-1"))
        if btype in (b"xml ", b"bxml"):
            return Block(Kind.XMP, f"meta {btype.decode('latin-1').strip()} box", d[s + 4 : e])
        return Block(Kind.UNKNOWN, f"meta box {btype!r}", d[s:e])

    def _infe(self, s: int, e: int) -> None:
        d = self.data
        version = d[s]
        if version < 2:
            return  # pre-HEIF item info: no item types
        id_size = 2 if version == 2 else 4
        item_id = int.from_bytes(d[s + 4 : s + 4 + id_size], "big")
        pos = s + 4 + id_size + 2
        item = self.item(item_id)
        item.type = d[pos : pos + 4]
        strings = d[pos + 4 : e].split(b"\x00")
        if item.type == b"mime" and len(strings) > 1:
            item.content_type = strings[1]

    def _iloc(self, s: int, e: int) -> None:
        d = self.data
        version = d[s]
        sizes = d[s + 4], d[s + 5]
        off_size, len_size, base_size = sizes[0] >> 4, sizes[0] & 15, sizes[1] >> 4
        index_size = sizes[1] & 15 if version in (1, 2) else 0
        pos = s + 6

        def read(n: int) -> int:
            nonlocal pos
            if pos + n > e:
                raise IndexError  # the box ends: "meta box is damaged"
            value = int.from_bytes(d[pos : pos + n], "big") if n else 0
            pos += n
            return value

        for _ in range(read(2 if version < 2 else 4)):
            item_id = read(2 if version < 2 else 4)
            method = read(2) & 15 if version in (1, 2) else 0
            read(2)  # data reference index
            base = read(base_size)
            extents = self.item(item_id).extents
            count = read(2)
            if len(extents) + count > _MAX_EXTENTS:  # with 0-byte fields, extents take no room in the box
                self.errors.append(f"iloc box: item {item_id} has over {_MAX_EXTENTS} extents")
                return
            for _ in range(count):
                read(index_size)
                offset, length = read(off_size), read(len_size)
                extents.append((method, base + offset, length))

    def _iref(self, s: int, e: int, version: int) -> None:
        d = self.data
        id_fmt = ">H" if version == 0 else ">I"
        n = struct.calcsize(id_fmt)
        for rtype, bs, be in _boxes(d, s + 4, e, self.errors):
            (source,) = struct.unpack(id_fmt, d[bs : bs + n])
            (count,) = struct.unpack(">H", d[bs + n : bs + n + 2])
            targets = [struct.unpack(id_fmt, d[bs + n + 2 + i * n : bs + 2 * n + 2 + i * n])[0] for i in range(count)]
            self.item(source).refs.setdefault(rtype, []).extend(targets)

    def _iprp(self, s: int, e: int) -> None:
        d = self.data
        properties: list[tuple[bytes, int, int]] = []
        for btype, bs, be in _boxes(d, s, e, self.errors):
            if btype == b"ipco":
                properties = _boxes(d, bs, be, self.errors)
                for ptype, ps, pe in properties:
                    if ptype == b"udes":  # user description: language, name, description, tags
                        self.extra.append(Block(Kind.TEXT, "udes (user description property)", d[ps + 4 : pe]))
                    elif ptype not in _PIXEL_PROPERTIES and not _empty_free(ptype, d[ps:pe]):
                        self.extra.append(Block(Kind.UNKNOWN, f"item property {ptype!r}", d[ps:pe]))
            elif btype == b"ipma":
                self._ipma(bs, be, properties)

    def _ipma(self, s: int, e: int, properties: list[tuple[bytes, int, int]]) -> None:
        d = self.data
        version, flags = d[s], int.from_bytes(d[s + 1 : s + 4], "big")
        pos = s + 8
        for _ in range(struct.unpack(">I", d[s + 4 : s + 8])[0]):
            id_size = 2 if version < 1 else 4
            item = self.item(int.from_bytes(d[pos : pos + id_size], "big"))
            pos += id_size
            count = d[pos]
            pos += 1
            for _ in range(count):
                wide = flags & 1
                raw = int.from_bytes(d[pos : pos + (2 if wide else 1)], "big")
                pos += 2 if wide else 1
                index = raw & (0x7FFF if wide else 0x7F)
                if not 1 <= index <= len(properties):
                    continue
                ptype, ps, pe = properties[index - 1]
                if ptype == b"auxC":
                    item.aux_type = d[ps + 4 : pe].split(b"\x00")[0]
                elif ptype == b"colr" and d[ps : ps + 4] in (b"prof", b"rICC"):
                    item.icc = d[ps + 4 : pe]

    def payload(self, item: _Item) -> bytes:
        """The item's bytes, at most as many as the file has (extents may overlap: each can be the whole file)."""
        parts, room = [], len(self.data)
        for method, offset, length in item.extents:
            source = self.data if method == 0 else self.idat if method == 1 else b""
            part = source[offset : offset + min(length or room, room)]
            parts.append(part)
            room -= len(part)
        return b"".join(parts)

    def blocks(self) -> list[Block]:
        primary = self.items.get(self.primary)
        tiles = set(primary.refs.get(b"dimg", [])) if primary else set()
        out = list(self.extra)
        if primary is not None:
            out.append(
                Block(
                    Kind.STRUCTURE,
                    f"primary image ({primary.type.decode('latin-1')}{f', {len(tiles)} tiles' if tiles else ''})",
                )
            )
            if primary.icc:
                out.append(Block(Kind.ICC, "colr ICC profile", primary.icc))
        for item_id, item in sorted(self.items.items()):
            if item is primary or item_id in tiles:
                continue
            out.append(self._classify(item_id, item))
        cut = [
            i
            for i, item in self.items.items()
            if any(method == 0 and offset + length > len(self.data) for method, offset, length in item.extents)
        ]
        if cut:
            out.append(Block(Kind.DAMAGED, f"data of {len(cut)} item(s) runs past the end of the file (truncated)"))
        return out

    def _classify(self, item_id: int, item: _Item) -> Block:
        label = f"item {item_id} ({item.type.decode('latin-1')})"
        if item.type == b"Exif":
            body = self.payload(item)
            skip = 4 + int.from_bytes(body[:4], "big") if len(body) >= 4 else 0
            return Block(Kind.EXIF, label, body[skip:])
        if item.type == b"mime":
            ctype = item.content_type.decode("latin-1")
            kind = Kind.XMP if b"xml" in item.content_type or b"xmp" in item.content_type else Kind.UNKNOWN
            return Block(kind, f"{label} {ctype}", self.payload(item))
        if item.type in _IMAGE_TYPES:
            if self.primary in item.refs.get(b"thmb", []):
                return Block(Kind.PREVIEW, f"{label} thumbnail", self.payload(item))
            if self.primary in item.refs.get(b"auxl", []) and item.aux_type in _ALPHA_AUX:
                return Block(Kind.STRUCTURE, f"{label} alpha channel")
            if self.primary in item.refs.get(b"auxl", []):
                return Block(Kind.PREVIEW, f"{label} auxiliary image {item.aux_type.decode('latin-1')}")
            return Block(Kind.PREVIEW, f"{label} other image")
        return Block(Kind.UNKNOWN, label, self.payload(item))


def _empty_free(btype: bytes, body: bytes) -> bool:
    """A free/skip box holding only zero bytes: padding, nothing hidden."""
    return btype in (b"free", b"skip") and not body.strip(b"\x00")


def walk(data: bytes) -> list[Block]:
    """Top-level boxes, with the meta box broken down into items by role."""
    errors: list[str] = []
    blocks: list[Block] = []
    for btype, s, e in _boxes(data, 0, len(data), errors):
        if btype in (b"ftyp", b"mdat"):
            blocks.append(Block(Kind.STRUCTURE, btype.decode("latin-1")))
        elif btype == b"meta":
            blocks.extend(_Meta(data, s, e, errors).blocks())
        elif btype == b"moov":
            blocks.append(Block(Kind.STRUCTURE, "moov (image sequence)"))
        elif _empty_free(btype, data[s:e]):
            blocks.append(Block(Kind.STRUCTURE, "free (empty)"))
        else:
            blocks.append(Block(Kind.UNKNOWN, f"box {btype!r}", data[s:e]))
    blocks.extend(Block(Kind.DAMAGED, message) for message in errors)
    return blocks


class Heif(ImageFormat):
    name = "HEIF"
    pillow_id = "HEIF"
    extensions = (".heic", ".heif")
    has_grey = False

    def sniff(self, head: bytes) -> bool:
        brands = ftyp_brands(head)
        if brands & {b"avif", b"avis"} and not brands & _HEVC_BRANDS:
            return False  # AV1 in HEIF: refused by name in formats.py
        return bool(brands & (_HEVC_BRANDS | _HEIF_BRANDS))

    def blocks(self, data: bytes) -> list[Block]:
        return walk(data)

    def frame_count(self, image: Image.Image, blocks: list[Block]) -> int:
        return 2 if any(b.name.startswith("moov") for b in blocks) else 1

    def applies_exif_orientation(self) -> bool:
        return False

    def is_lossless(self, blocks: list[Block]) -> bool:
        return False

    def output_name(self, options: OutputOptions) -> str:
        return options.heic_as  # JPEG by default: every browser and upload form takes it

    def save_options(self, *, lossless: bool, options: OutputOptions) -> dict[str, Any]:
        return {"quality": options.heif_quality}
