"""Read what an XMP packet says: captions, names (including named face regions), places, cameras, dates.

XMP is RDF/XML; a property may be an attribute of rdf:Description or an element whose value sits in an
rdf:Alt/Seq/Bag list, at any depth (face-region names are nested three levels down). We walk every
element and attribute and pick the properties below by namespace and name. Python's expat refuses
external entities and caps entity expansion, so hostile packets cannot reach files or blow up memory.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .report import CAMERA, DATES, LOCATION, OTHER, PEOPLE, SOFTWARE, Finding

_NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "exifEX": "http://cipa.jp/exif/1.0/",
    "aux": "http://ns.adobe.com/exif/1.0/aux/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "xmpRights": "http://ns.adobe.com/xap/1.0/rights/",
    "mwg-rs": "http://www.metadataworkinggroup.com/schemas/regions/",
    "MP": "http://ns.microsoft.com/photo/1.2/",
    "MPRI": "http://ns.microsoft.com/photo/1.2/t/RegionInfo#",
    "MPReg": "http://ns.microsoft.com/photo/1.2/t/Region#",
}
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"

_PROPERTIES: dict[tuple[str, str], tuple[str, str]] = {
    ("dc", "description"): (PEOPLE, "description"),
    ("dc", "title"): (PEOPLE, "title"),
    ("dc", "creator"): (PEOPLE, "creator"),
    ("dc", "subject"): (PEOPLE, "keywords"),
    ("dc", "rights"): (PEOPLE, "rights"),
    ("photoshop", "Headline"): (PEOPLE, "headline"),
    ("photoshop", "Credit"): (PEOPLE, "credit"),
    ("photoshop", "Source"): (PEOPLE, "source"),
    ("photoshop", "AuthorsPosition"): (PEOPLE, "author's position"),
    ("photoshop", "CaptionWriter"): (PEOPLE, "caption writer"),
    ("photoshop", "City"): (LOCATION, "city"),
    ("photoshop", "State"): (LOCATION, "state/province"),
    ("photoshop", "Country"): (LOCATION, "country"),
    ("photoshop", "DateCreated"): (DATES, "created"),
    ("Iptc4xmpCore", "Location"): (LOCATION, "sublocation"),
    ("Iptc4xmpCore", "CountryCode"): (LOCATION, "country code"),
    ("Iptc4xmpCore", "CiEmailWork"): (PEOPLE, "creator e-mail"),
    ("Iptc4xmpCore", "CiTelWork"): (PEOPLE, "creator phone"),
    ("Iptc4xmpCore", "CiAdrCity"): (PEOPLE, "creator address city"),
    ("Iptc4xmpExt", "PersonInImage"): (PEOPLE, "person shown"),
    ("Iptc4xmpExt", "City"): (LOCATION, "city shown"),
    ("Iptc4xmpExt", "Sublocation"): (LOCATION, "place shown"),
    ("exif", "GPSLatitude"): (LOCATION, "GPS latitude"),
    ("exif", "GPSLongitude"): (LOCATION, "GPS longitude"),
    ("exif", "DateTimeOriginal"): (DATES, "taken"),
    ("exif", "UserComment"): (PEOPLE, "user comment"),
    ("exifEX", "BodySerialNumber"): (CAMERA, "camera body serial number"),
    ("exifEX", "LensSerialNumber"): (CAMERA, "lens serial number"),
    ("exifEX", "CameraOwnerName"): (CAMERA, "camera owner"),
    ("aux", "SerialNumber"): (CAMERA, "camera serial number"),
    ("aux", "LensSerialNumber"): (CAMERA, "lens serial number"),
    ("aux", "OwnerName"): (CAMERA, "camera owner"),
    ("aux", "Lens"): (CAMERA, "lens"),
    ("tiff", "Make"): (CAMERA, "camera make"),
    ("tiff", "Model"): (CAMERA, "camera model"),
    ("tiff", "Artist"): (PEOPLE, "artist"),
    ("tiff", "ImageDescription"): (PEOPLE, "description"),
    ("tiff", "Copyright"): (PEOPLE, "copyright"),
    ("xmp", "CreateDate"): (DATES, "created"),
    ("xmp", "ModifyDate"): (DATES, "modified"),
    ("xmp", "CreatorTool"): (SOFTWARE, "creator tool"),
    ("xmpMM", "OriginalDocumentID"): (OTHER, "original document ID (links edited copies)"),
    ("xmpMM", "DocumentID"): (OTHER, "document ID"),
    ("xmpRights", "Owner"): (PEOPLE, "rights owner"),
    ("mwg-rs", "Name"): (PEOPLE, "named face region"),
    ("MP", "PersonDisplayName"): (PEOPLE, "named person region"),
    ("MPReg", "PersonDisplayName"): (PEOPLE, "named person region"),
}
_LOOKUP = {(f"{{{_NS[prefix]}}}{name}"): (prefix, what) for (prefix, name), what in _PROPERTIES.items()}


def xmp_findings(packet: bytes, source: str = "XMP") -> list[Finding]:
    """Findings from an XMP packet; one finding for a packet that is not well-formed XML."""
    start = packet.find(b"<x:xmpmeta")
    if start < 0:
        start = packet.find(b"<rdf:RDF")
    end_tag = b"</x:xmpmeta>" if packet[start : start + 10] == b"<x:xmpmeta" else b"</rdf:RDF>"
    end = packet.find(end_tag, start)
    if start < 0 or end < 0:
        return [Finding(OTHER, "XMP packet", f"{len(packet)} bytes, not readable as XML", source)]
    try:
        root = ET.fromstring(packet[start : end + len(end_tag)])
    except ET.ParseError:
        return [Finding(OTHER, "XMP packet", f"{len(packet)} bytes, not well-formed XML", source)]
    out: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for element in root.iter():
        for key, value in [(element.tag, _element_text(element))] + list(element.attrib.items()):
            if key in _LOOKUP and value:
                prefix, (topic, what) = _LOOKUP[key]
                if (what, value) not in seen:
                    seen.add((what, value))
                    out.append(Finding(topic, what, value, f"{source} {prefix}:{key.rsplit('}', 1)[1]}"))
    return out


def _element_text(element: ET.Element) -> str:
    """A simple value, or the items of an rdf:Alt/Seq/Bag joined with "; "."""
    items = [li.text.strip() for li in element.iter(f"{{{_RDF}}}li") if li.text and li.text.strip()]
    if items:
        return "; ".join(items)
    return (element.text or "").strip()
