"""Read IPTC-IIM records (captions, bylines, keywords, places) and Photoshop image resources.

Photoshop stores IPTC inside "image resource blocks" (8BIM, id, padded Pascal name, padded data); the
same blocks can also hold a thumbnail (ids 0x0409/0x040C), EXIF (0x0422) and XMP (0x0424). A TIFF's
IPTC tag holds bare IIM records: tag marker 0x1C, record, dataset, length, data.
"""

from __future__ import annotations

import struct

from .report import DATES, LOCATION, OTHER, PEOPLE, PREVIEWS, Finding

_DATASETS: dict[int, tuple[str, str]] = {
    5: (PEOPLE, "object name"),
    25: (PEOPLE, "keywords"),
    40: (PEOPLE, "special instructions"),
    55: (DATES, "created"),
    80: (PEOPLE, "by-line (creator)"),
    85: (PEOPLE, "by-line title"),
    90: (LOCATION, "city"),
    92: (LOCATION, "sublocation"),
    95: (LOCATION, "province/state"),
    100: (LOCATION, "country code"),
    101: (LOCATION, "country"),
    103: (OTHER, "transmission reference"),
    105: (PEOPLE, "headline"),
    110: (PEOPLE, "credit"),
    115: (PEOPLE, "source"),
    116: (PEOPLE, "copyright notice"),
    118: (PEOPLE, "contact"),
    120: (PEOPLE, "caption"),
    122: (PEOPLE, "caption writer"),
}
_RESOURCES = {0x0409: "thumbnail", 0x040C: "thumbnail", 0x0422: "EXIF copy", 0x0424: "XMP copy"}


def iptc_findings(payload: bytes, source: str = "IPTC") -> list[Finding]:
    """Findings from Photoshop image resources or bare IIM records."""
    if not payload.startswith(b"8BIM"):
        return _iim(payload, source)
    out: list[Finding] = []
    for resource_id, data in _resources(payload):
        if resource_id == 0x0404:
            out += _iim(data, source)
        elif resource_id in _RESOURCES:
            topic = PREVIEWS if _RESOURCES[resource_id] == "thumbnail" else OTHER
            out.append(
                Finding(
                    topic,
                    f"Photoshop {_RESOURCES[resource_id]}",
                    f"{len(data)} bytes",
                    f"Photoshop resource 0x{resource_id:04X}",
                )
            )
    return out


def _resources(payload: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos + 12 <= len(payload) and payload[pos : pos + 4] == b"8BIM":
        (resource_id,) = struct.unpack(">H", payload[pos + 4 : pos + 6])
        name_len = payload[pos + 6]
        pos += 6 + name_len + 1 + ((name_len + 1) & 1)  # Pascal name padded to even length
        if pos + 4 > len(payload):
            break
        (size,) = struct.unpack(">I", payload[pos : pos + 4])
        out.append((resource_id, payload[pos + 4 : pos + 4 + size]))
        pos += 4 + size + (size & 1)
    return out


def _iim(data: bytes, source: str) -> list[Finding]:
    values: dict[int, list[str]] = {}
    pos = 0
    while pos + 5 <= len(data) and data[pos] == 0x1C:
        record, dataset, size = data[pos + 1], data[pos + 2], struct.unpack(">H", data[pos + 3 : pos + 5])[0]
        pos += 5
        if size & 0x8000:  # extended dataset: the low bits give the byte count of the real length
            n = size & 0x7FFF
            size = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        value = data[pos : pos + size]
        pos += size
        if record == 2 and dataset in _DATASETS:
            text = _decode(value)
            if text:
                values.setdefault(dataset, []).append(text)
    return [Finding(_DATASETS[d][0], _DATASETS[d][1], "; ".join(v), f"{source} 2:{d}") for d, v in values.items()]


def _decode(value: bytes) -> str:
    """IIM text: UTF-8 when it decodes as such (the 1:90 character-set record is often missing), else Latin-1."""
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        return value.decode("latin-1").strip()
