"""``cloakd inspect`` (what a photo would leak) and ``cloakd strip`` (write clean copies).

Both take several files and keep going when one fails: each failure is one line on stderr, and the exit
status is non-zero if any file failed. Inputs are only ever read; ``strip`` never overwrites anything:
an output name that exists gets a numbered suffix, and files are created exclusively.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cloakd.core.errors import CloakdError
from cloakd.core.photo.container import OutputOptions
from cloakd.core.photo.decode import DEFAULT_MAX_PIXELS
from cloakd.core.photo.inspect import inspect
from cloakd.core.photo.keep import resolve
from cloakd.core.photo.strip import strip_bytes
from cloakd.daemon.files import write_new_file

EXIT_SOME_FAILED = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="show what photos would leak (location, camera, serials, captions...)",
                              description="Show, in plain words, the metadata each photo carries.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output (a JSON list, one entry per file)")
    p.set_defaults(func=run_inspect)

    s = subparsers.add_parser("strip", help="write metadata-free copies of photos",
                              description="Re-encode each photo into a fresh file without metadata, verify it, "
                                          "and write it to DIR (never overwriting anything).")
    s.add_argument("files", nargs="+", type=Path, metavar="FILE")
    s.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the clean copies")
    s.add_argument("--keep", action="append", default=[], metavar="TAG",
                   help="EXIF tag to keep, e.g. DateTimeOriginal (repeatable; GPS and Orientation never)")
    s.add_argument("--heic-as", choices=["jpeg", "heif"], default="jpeg", help="output format for HEIC inputs")
    s.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                   help="refuse larger images (decompression-bomb guard; default %(default)g)")
    s.set_defaults(func=run_strip)


def _fail(path: Path, error: Exception) -> None:
    """One line per failed file; OSError gets the file it concerns (input or output) and the system's reason."""
    if isinstance(error, OSError):
        message = f"{error.filename or path}: {error.strerror or error}"
    else:
        message = str(error)
    print(f"cloakd: error: {message}", file=sys.stderr)


def run_inspect(args: argparse.Namespace) -> int:
    failed = 0
    results = []
    for path in args.files:
        try:
            report = inspect(path.read_bytes(), label=str(path))
        except (CloakdError, OSError) as e:
            failed += 1
            _fail(path, e)
            results.append({"file": str(path), "error": str(e)})
            continue
        results.append({"file": str(path), **report.to_dict()})
        if not args.json:
            lines = report.lines()
            print(f"{path}: {lines[0]}")
            print("\n".join(lines[1:]))
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    return EXIT_SOME_FAILED if failed else 0


def run_strip(args: argparse.Namespace) -> int:
    keep = resolve(args.keep)  # a bad tag name stops everything before any file is touched
    options = OutputOptions(heif_as=args.heic_as.upper())
    max_pixels = int(args.max_megapixels * 1e6)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.files:
        try:
            clean = strip_bytes(path.read_bytes(), keep=keep, options=options, max_pixels=max_pixels, label=str(path))
            target = write_new_file(args.out, path.stem, clean.extension, clean.data)
        except (CloakdError, OSError) as e:
            failed += 1
            _fail(path, e)
            continue
        kept = f", kept {', '.join(clean.kept)}" if clean.kept else ""
        print(f"{path} -> {target} ({clean.format}{kept})")
    return EXIT_SOME_FAILED if failed else 0
