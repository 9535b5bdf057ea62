"""``cloakd inspect`` (what a photo would leak) and ``cloakd strip`` (write clean copies).

Both take several files and keep going when one fails: each failure is one line on stderr, and the exit
status is Exit.FAILED if any file failed. Inputs are only ever read; ``strip`` never overwrites anything:
an output name that exists gets a numbered suffix (daemon/files.py). ``strip`` also takes folders (photos
found by content, ``--recursive`` for sub-folders; daemon/cli/batch.py) and ends with one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cloakd.core.errors import CloakdError
from cloakd.core.photo.decode import DEFAULT_MAX_PIXELS
from cloakd.core.photo.inspect import inspect
from cloakd.core.photo.strip import strip_bytes
from cloakd.daemon.files import write_new_file

from .batch import Summary, add_inputs, folder_for, items
from .exits import Exit, fail
from .options import add_command, add_output_options, number, output_folder, output_settings
from .progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "inspect",
        summary="show what photos would tell about you (place, camera, names...)",
        description="Show, in plain words, the metadata each photo carries: where it was taken, the "
        "camera and its serial number, dates, captions naming people, embedded previews. "
        "Nothing is changed.",
        example="cloakd inspect holiday.jpg",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="photos to look at")
    p.add_argument("--json", action="store_true", help="machine-readable output (a JSON list, one entry per file)")
    p.add_argument(
        "--max-megapixels",
        type=number(float, 0, inclusive=False),
        default=DEFAULT_MAX_PIXELS / 1e6,
        help="say when a photo is larger than cloakd processes (default %(default)g)",
    )
    p.set_defaults(func=run_inspect)

    s = add_command(
        subparsers,
        "strip",
        summary="write copies of photos without metadata (no cloak)",
        description="Write a clean copy of each photo into a folder: the picture re-encoded into a "
        "fresh file with no metadata (no GPS position, camera serials, captions, "
        "thumbnails), checked after writing. Nothing existing is ever replaced: a name "
        "that is taken gets -1, -2, ... Faces are not cloaked: use 'cloakd protect' "
        "for that.",
        example="cloakd strip IMG_0001.jpg IMG_0002.heic camera/ --out clean",
    )
    add_inputs(s, "files", "photos to copy")
    add_output_options(s, "the clean copies")
    s.add_argument(
        "--max-megapixels",
        type=number(float, 0, inclusive=False),
        default=DEFAULT_MAX_PIXELS / 1e6,
        help="refuse larger images (decompression-bomb guard; default %(default)g)",
    )
    s.set_defaults(func=run_strip)


def run_inspect(args: argparse.Namespace) -> int:
    failed = 0
    results = []
    for path in args.files:
        try:
            report = inspect(path.read_bytes(), label=str(path), max_pixels=int(args.max_megapixels * 1e6))
        except (CloakdError, OSError) as e:
            failed += 1
            results.append({"file": str(path), "error": fail(path, e)})
            continue
        if report.problem:
            failed += 1
            print(f"cloakd: error: {report.problem}", file=sys.stderr)
        results.append({"file": str(path), **report.to_dict()})
        if not args.json:
            lines = report.lines()
            print(f"{path}: {lines[0]}")
            print("\n".join(lines[1:]))
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    return Exit.FAILED if failed else Exit.OK


def run_strip(args: argparse.Namespace) -> int:
    keep, options = output_settings(args)
    max_pixels = int(args.max_megapixels * 1e6)
    out = output_folder(args.out)
    batch, bad_inputs = items(args.files, out, args.recursive)
    summary = Summary(("stripped", "failed"))
    with Progress("strip", len(batch)) as progress:
        for item in batch:
            path = item.path
            try:
                clean = strip_bytes(
                    path.read_bytes(), keep=keep, options=options, max_pixels=max_pixels, label=str(path)
                )
                target = write_new_file(folder_for(item), path.stem, clean.extension, clean.data)
            except (CloakdError, OSError) as e:
                summary.add("failed")
                fail(path, e)
            else:
                summary.add("stripped")
                kept = f", kept {', '.join(clean.kept)}" if clean.kept else ""
                print(f"{path} -> {target} ({clean.format}{kept})")
            progress.advance()
    print(summary.line())
    return Exit.FAILED if bad_inputs or summary.counts.get("failed") else Exit.OK
