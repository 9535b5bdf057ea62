"""How commands report failures: one line on stderr per failed or skipped item, and one table of exit statuses."""

from __future__ import annotations

import enum
import sys

from cloakd.core.errors import os_error_text


class Exit(enum.IntEnum):
    OK = 0
    #: a question without an answer yet (`cloakd target show` for a user who has no target class)
    NOTHING = 1
    #: a mistake in the command line, the configuration or an input file, or some of the files failed
    #: (each one said why on stderr; the others were processed)
    FAILED = 2
    #: a bug in cloakd (EX_SOFTWARE); `--debug` shows where
    INTERNAL = 70
    #: stopped with Ctrl-C
    INTERRUPTED = 130


def fail(item: object, error: Exception) -> str:
    """Say on stderr, in one line, why ``item`` (a file, usually) failed; returns the reason.

    A CloakdError speaks for itself; an OSError is the file it names (else ``item``) and the system's reason.
    """
    reason = os_error_text(error, item) if isinstance(error, OSError) else str(error)
    print(f"cloakd: error: {reason}", file=sys.stderr)
    return reason


def skip(item: object, error: Exception) -> None:
    """Say on stderr, in one line, that ``item`` is left out of a set of photos (it is not an error of the run)."""
    reason = os_error_text(error, item) if isinstance(error, OSError) else f"{item}: {error}"
    print(f"cloakd: skipping {reason}", file=sys.stderr)
