"""The ``cloakd`` command: one module per sub-command (each has ``register(subparsers)``).

Every expected failure (CloakdError, or an OSError about a file) is printed as one line on stderr and gives
Exit.FAILED; anything else is a bug, printed as one line with Exit.INTERNAL (``--debug`` shows tracebacks).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys

# Before torch is imported anywhere: with OpenMP's default busy-waiting, 2 threads run many times slower as
# soon as another process is busy on the other core (README.md, "Measured"); passive waiting costs nothing
# otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cloakd.core.errors import CloakdError, os_error_text

from .exits import Exit

# Sub-command modules, in the order `cloakd --help` lists them.
COMMAND_MODULES = ["faces", "photo", "targets", "enrol", "protect", "preview", "sybil", "evaluate", "service", "worker"]

DESCRIPTION = """\
cloakd protects the faces in your photos before they go online. It cloaks each face (the Fawkes method:
small pixel changes that make a face-recognition model trained on your photos learn the wrong features)
and strips the metadata (GPS position, camera serial numbers, captions, thumbnails). Everything runs on
this computer, offline.

Run `cloakd COMMAND --help` for a command's options and an example."""

EPILOG = """\
examples:
  cloakd protect holiday.jpg --out ready          cloak and clean a photo into the folder ready
  cloakd inspect holiday.jpg                      what a photo would tell about you
  cloakd enrol --user me photos-of-me/            tell cloakd which face is yours"""


def version() -> str:
    """``cloakd X.Y.Z``: the installed package's version."""
    try:
        return f"cloakd {importlib.metadata.version('cloakd')}"
    except importlib.metadata.PackageNotFoundError:
        return "cloakd (version unknown: not installed as a package; bash scripts/install.sh installs it)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloakd", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    parser.add_argument("--version", action="version", version=version(), help="print cloakd's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or Exit.OK)
    except (CloakdError, OSError) as e:
        if args.debug:
            raise
        print(f"cloakd: error: {os_error_text(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return Exit.FAILED
    except KeyboardInterrupt:
        print("cloakd: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a bug; still one line unless --debug
        if args.debug:
            raise
        print(f"cloakd: internal error: {type(e).__name__}: {e} (run with --debug for details)", file=sys.stderr)
        return Exit.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
