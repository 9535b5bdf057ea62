"""``cloakd protect PHOTO... --out DIR [--user NAME] [--mode mid]``: cloaked, clean copies, verified.

With ``--user`` the user's persistent target class is used (``cloakd enrol`` or ``cloakd target choose``
sets it), and, if the user is enrolled, only the face that matches the user's references is cloaked
towards it; other faces follow ``--others``. Without ``--user``, a target is chosen for this run only, by
eq. 3 from the faces in the given photos, and printed, and every face is cloaked towards it. Every
output is the same format and size as its input (HEIC becomes JPEG unless ``--heic-as heif``), stripped
of metadata and verified; a photo whose cloak does not verify is not written (fail closed). A photo that
cannot be read fails alone: each failure is one line on stderr, the others are processed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloakd.core.cloak.presets import DEFAULT_PRESET
from cloakd.core.errors import CloakdError

from ..config import MODES, OTHERS, UserConfig
from .exits import Exit, fail
from .models import load_analyzer
from .options import (
    add_command,
    add_output_options,
    add_state_options,
    number,
    output_folder,
    output_settings,
    state_dir,
)
from .progress import Progress
from .targets import describe_photos
from .words import count

if TYPE_CHECKING:
    from cloakd.core.targets import TargetBank


def register(sub) -> None:
    p = add_command(
        sub,
        "protect",
        summary="write cloaked, metadata-free copies of photos",
        description="Cloak the faces in each photo and strip its metadata, check the result after "
        "writing, and write it into a folder (never replacing anything). A photo whose "
        "cloak does not check out is not written. With --user, the user's lasting "
        "target class is used and, once the user is enrolled, only the user's face is "
        "cloaked towards it; without --user, a target class is chosen for this run "
        "from the faces in the photos.",
        example="cloakd protect holiday.jpg party.heic --out ready --user alice",
    )
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photos to protect")
    add_output_options(p, "the protected copies")
    p.add_argument("--user", help="protect as this user: their lasting target class and enrolled face (cloakd enrol)")
    p.add_argument("--mode", default=DEFAULT_PRESET, choices=MODES, help="cloak strength (default %(default)s)")
    p.add_argument(
        "--others",
        default=UserConfig.others,
        choices=OTHERS,
        help="faces that are not the enrolled user's: cloak them away from their own features "
        "(default) or leave them as they are",
    )
    p.add_argument(
        "--rho",
        type=number(float, 0, inclusive=False),
        help="DSSIM budget instead of the mode's (the paper's is 0.007)",
    )
    p.add_argument("--steps", type=number(int, 0), help="optimisation steps instead of the mode's")
    p.add_argument("--seed", type=int, default=0, help="same seed, input, mode and target: identical output")
    p.add_argument(
        "--preview",
        type=Path,
        metavar="DIR",
        help="also write a picture of each cloak into DIR (original | cloaked | difference, around each cloaked face)",
    )
    add_state_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per photo")
    p.set_defaults(func=run)


def _target(args, analyzer) -> tuple[str | None, np.ndarray | None, "TargetBank"]:
    """(name, stored primary centroid or None, bank) of the user's stored target, or of one chosen now from
    the photos' faces (name None: no face to choose it from)."""
    from cloakd.core.targets import TargetBank, choose_target
    from cloakd.daemon.targets import TargetStore

    bank = TargetBank.load()
    if args.user:
        stored = TargetStore(args.state).get(args.user)
        if stored is None:
            raise CloakdError(
                f"user {args.user!r} has no target class yet: run 'cloakd target choose --user "
                f"{args.user} --photos REFERENCE_PHOTOS' (or 'cloakd enrol') first"
            )
        return stored.name, stored.centroid, bank
    refs = describe_photos(analyzer, list(args.photos), warn=False)  # unreadable photos fail in the main loop
    if len(refs) == 0:
        return None, None, bank
    choice = choose_target(bank, refs, rng=np.random.default_rng(args.seed))
    print(f"target class for this run: {choice.name} (not persisted; use --user for a lasting one)", file=sys.stderr)
    return choice.name, None, bank


def _references(args, analyzer) -> np.ndarray | None:
    from cloakd.daemon.references import ReferenceStore

    if not args.user:
        return None
    references = ReferenceStore(args.state, analyzer.extractor.name).get(args.user)
    if references is None:
        print(
            f"cloakd: {args.user} is not enrolled: every face is cloaked towards the target class "
            f"('cloakd enrol --user {args.user} PHOTOS' singles out the user's face)",
            file=sys.stderr,
        )
    return references


def run(args) -> int:
    from cloakd.core import protect, request_for_target
    from cloakd.daemon.files import write_new_file

    keep, options = output_settings(args)
    args.state = state_dir(args) if args.user else None
    out = output_folder(args.out)
    previews = output_folder(args.preview) if args.preview else None
    analyzer = load_analyzer(cloaks=True)
    name, centroid, bank = _target(args, analyzer)
    request = request_for_target(
        name,
        centroid,
        bank=bank,
        references=_references(args, analyzer),
        others=args.others,
        mode=args.mode,
        keep=keep,
        options=options,
        seed=args.seed,
        rho=args.rho,
        steps=args.steps,
    )
    failed = 0
    with Progress("protect", len(args.photos)) as progress:
        for path in args.photos:
            try:
                data = path.read_bytes()
                result = protect(analyzer, data, request, label=str(path))
                written = write_new_file(out, path.stem, result.extension, result.data) if result.ok else None
                preview = _preview(analyzer, previews, path, data, result) if written and previews else None
            except (CloakdError, OSError) as e:
                failed += 1
                fail(path, e)
            else:
                failed += not result.ok
                _report(args, path, written, preview, result, name)
            progress.advance()
    return Exit.FAILED if failed else Exit.OK


def _preview(analyzer, folder: Path, path: Path, original: bytes, result) -> Path:
    from cloakd.core.photo.decode import decode
    from cloakd.daemon.files import write_new_file

    from .preview import render

    before, after = decode(original, label=str(path)).rgb, decode(result.data, label=str(path)).rgb
    modes = [(f.box, f.mode) for f in result.faces if f.role != "left"]
    png = render(analyzer, before, after, f"{path.name}: original | cloaked | difference", modes)
    return write_new_file(folder, f"{path.stem}-preview", ".png", png)


def cloaked_faces(result) -> int:
    return sum(f.role != "left" for f in result.faces)


def outcome(result, user: str | None) -> str:
    """What happened to a photo, in words: how many faces were cloaked, and whether it was written."""
    faces, cloaked = len(result.faces), cloaked_faces(result)
    if not result.ok:
        return f"{count(faces, 'face')}, NOT PROTECTED, nothing written"
    if faces == 0:
        return "no face found: metadata stripped only"
    if cloaked == 0:
        whose = f"none is {user}'s and --others leave" if user else "--others leave"
        return f"{count(faces, 'face')}, none cloaked ({whose}): metadata stripped only"
    left = faces - cloaked
    return f"{count(faces, 'face')}, {cloaked} cloaked{f', {left} left as they are' if left else ''}: protected"


def _report(args, path: Path, out: Path | None, preview: Path | None, result, target: str | None) -> None:
    if args.json:
        print(
            json.dumps(
                {
                    "photo": str(path),
                    "output": str(out) if out else None,
                    "protected": result.ok,
                    "cloaked": cloaked_faces(result),
                    "preview": str(preview) if preview else None,
                    "target": target,
                    "reason": result.reason,
                    "seconds": round(result.seconds, 2),
                    "faces": [f.as_dict() for f in result.faces],
                }
            )
        )
        return
    print(f"{path} -> {out or '-'}: {outcome(result, args.user)}, {result.seconds:.1f} s")
    for i, f in enumerate(result.faces, 1):
        if f.role == "left":
            print(f"  face {i}: left as is (not the user's)")
            continue
        shift = f"moved {f.moved:.3f}" if f.moved is not None else ""
        towards = (
            f", to target {f.to_target_before:.3f} -> {f.to_target_after:.3f}" if f.to_target_after is not None else ""
        )
        ok = "verified" if f.verified else f"FAILED: {f.reason}"
        print(f"  face {i} ({f.role}, {f.mode}): DSSIM {f.dssim:.4f}, {shift}{towards}: {ok}")
    if preview:
        print(f"  preview: {preview}")
    if not result.ok:
        print(f"  reason: {result.reason}", file=sys.stderr)
