"""Numbers in plain words for the commands' output."""

from __future__ import annotations


def count(n: int, thing: str) -> str:
    """``1 face``, ``2 faces``."""
    return f"{n} {thing}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
