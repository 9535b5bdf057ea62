"""What a file would leak, as data (for --json and the service) and as plain sentences (for people)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Topics in the order a person cares about them.
LOCATION = "location"
PEOPLE = "people, captions and comments"
CAMERA = "camera and serial numbers"
DATES = "dates"
PREVIEWS = "embedded previews"
SOFTWARE = "software"
OTHER = "other metadata"
TOPICS = (LOCATION, PEOPLE, CAMERA, DATES, PREVIEWS, SOFTWARE, OTHER)


def text_value(payload: bytes) -> str:
    """A block's text as shown in a finding: decoded leniently, trimmed, at most 500 characters."""
    text = payload.decode("utf-8", "replace").strip("\x00 \r\n\t")
    return text if len(text) <= 500 else text[:500] + "..."


@dataclass(frozen=True)
class Finding:
    """One thing the file tells: ``what`` ("GPS position"), its ``value`` in plain text, and where it sits."""

    topic: str
    what: str
    value: str
    source: str


@dataclass(frozen=True)
class Report:
    """Everything ``inspect`` found in one file. ``size`` is (width, height) as displayed, if readable;
    ``problem`` says why cloakd would refuse to process the file ("" if its header shows no reason)."""

    format: str
    size: tuple[int, int] | None
    findings: tuple[Finding, ...]
    problem: str = ""

    @property
    def clean(self) -> bool:
        return not self.findings

    def lines(self) -> list[str]:
        """Plain-words summary: a heading per topic, one line per finding."""
        size = f", {self.size[0]} x {self.size[1]} pixels" if self.size else ""
        out = [f"{self.format}{size}"]
        if self.problem:
            out.append(f"  cloakd cannot process it: {self.problem}")
        if self.clean:
            out.append("  no metadata found: nothing beyond the picture itself")
            return out
        for topic in TOPICS:
            found = [f for f in self.findings if f.topic == topic]
            if found:
                out.append(f"  {topic}:")
                out += [f"    {f.what}: {f.value}  [{f.source}]" for f in found]
        return out

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "size": list(self.size) if self.size else None,
            "findings": [asdict(f) for f in self.findings],
            "problem": self.problem,
        }
