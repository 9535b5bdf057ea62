"""The ``cloakd`` command. Each sub-command lives in its own module with ``register(subparsers)``.

Every expected failure is a :class:`cloakd.core.errors.CloakdError` and is printed as one line on stderr
with a non-zero exit status; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before torch is imported anywhere: with OpenMP's default busy-waiting, 2 threads run 20-50x slower as
# soon as another process is busy on the other core (measured); passive waiting costs nothing otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cloakd.core.errors import CloakdError

# Sub-command modules, in the order `cloakd --help` lists them.
COMMAND_MODULES = ["faces", "photo", "targets", "enrol", "protect", "sybil", "evaluate", "service"]

EXIT_ERROR = 2      # bad input or configuration
EXIT_INTERNAL = 70  # a bug (EX_SOFTWARE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloakd", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CloakdError as e:
        if args.debug:
            raise
        print(f"cloakd: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cloakd: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug; still one line unless --debug
        if args.debug:
            raise
        print(f"cloakd: internal error: {type(e).__name__}: {e} (run with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
