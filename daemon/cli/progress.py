"""Progress over a command's items on stderr: n of N, time elapsed and time left.

On a terminal, one line is redrawn in place; whatever the command prints meanwhile (results on stdout,
errors on stderr) clears it first and it is drawn again below, so no line is ever cut. Elsewhere (a pipe,
a log file), a plain line is written at every tenth of the way. A single item shows no progress.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..words import duration

_CLEAR = "\r\033[K"


class Progress:
    """``with Progress("protect", len(photos)) as progress: ... progress.advance()`` after each item."""

    def __init__(self, what: str, total: int, stream: TextIO | None = None):
        self.what, self.total, self.done = what, total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.shown = total > 1
        self.live = self.shown and self.stream.isatty()
        self._start = time.monotonic()
        self._drawn = False
        self._saved: tuple[TextIO, TextIO] | None = None

    def text(self) -> str:
        elapsed = time.monotonic() - self._start
        left = (
            f"about {duration(elapsed / self.done * (self.total - self.done))} left"
            if self.done
            else "time left not known yet"
        )
        return f"{self.what}: {self.done} of {self.total}, {duration(elapsed)} elapsed, {left}"

    def advance(self) -> None:
        """One more item is finished."""
        self.done += 1
        if self.live:
            self._draw()
        elif self.shown and (self.done * 10 // self.total > (self.done - 1) * 10 // self.total):
            print(f"cloakd: {self.text()}", file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        if self.live:
            self._saved = (sys.stdout, sys.stderr)
            sys.stdout = _ClearingStream(sys.stdout, self)
            sys.stderr = _ClearingStream(sys.stderr, self)
            self._draw()
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self.clear()

    def _draw(self) -> None:
        self.stream.write(_CLEAR + self.text())
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._drawn = False

    def redraw_after(self, text: str) -> None:
        if text.endswith("\n"):
            self._draw()


class _ClearingStream:
    """A stand-in for sys.stdout / sys.stderr while a live progress line is shown."""

    def __init__(self, stream: TextIO, progress: Progress):
        self._stream, self._progress = stream, progress

    def write(self, text: str) -> int:
        self._progress.clear()
        written = self._stream.write(text)
        self._stream.flush()
        self._progress.redraw_after(text)
        return written

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
