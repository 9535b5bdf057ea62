"""``cloakd protect PHOTO... --out DIR [--user NAME] [--mode mid]``: cloaked, clean copies, verified.

With ``--user`` the user's persistent target class is used (``cloakd enrol`` or ``cloakd target choose``
sets it), and, if the user is enrolled, only the face that matches the user's references is cloaked
towards it; other faces follow ``--others``. Without ``--user``, a target is chosen for this run only, by
eq. 3 from the faces in the given photos, and printed, and every face is cloaked towards it. Every
output is the same format and size as its input (HEIC becomes JPEG unless ``--heic-as heif``), stripped
of metadata and verified; a photo whose cloak does not verify is not written (fail closed).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from cloakd.core.errors import CloakdError
from cloakd.core.photo.container import OutputOptions
from cloakd.core.photo.keep import resolve
from cloakd.core.cloak.presets import DEFAULT_PRESET, PRESETS

from .models import load_analyzer
from .targets import DEFAULT_STATE_DIR, describe_photos


def register(sub) -> None:
    p = sub.add_parser("protect", help="write cloaked, metadata-free copies of photos", description=__doc__)
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    p.add_argument("--out", type=Path, required=True, help="folder for the protected copies")
    p.add_argument("--user", help="use this user's persistent target class")
    p.add_argument("--mode", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="cloak strength (default %(default)s)")
    p.add_argument("--others", default="away", choices=["away", "leave"],
                   help="faces that are not the user's (when the user has reference photos): cloak them "
                        "untargeted (default) or leave them")
    p.add_argument("--rho", type=float, help="DSSIM budget instead of the mode's (the paper's is 0.007)")
    p.add_argument("--steps", type=int, help="optimisation steps instead of the mode's")
    p.add_argument("--seed", type=int, default=0, help="same seed, input, mode and target: identical output")
    p.add_argument("--keep", action="append", default=[], metavar="TAG", help="EXIF tag to keep (repeatable)")
    p.add_argument("--heic-as", default="jpeg", choices=["jpeg", "heif"])
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("CLOAKD_STATE_DIR", DEFAULT_STATE_DIR)))
    p.add_argument("--json", action="store_true", help="one JSON object per photo")
    p.set_defaults(func=run)


def _target(args, analyzer):
    """(name, descriptors by extractor) of the user's stored target, or one chosen now from the photos' faces."""
    from cloakd.core.targets import TargetBank, choose_target
    from cloakd.daemon.targets import TargetStore

    if args.user:
        stored = TargetStore(args.state_dir).get(args.user)
        if stored is None:
            raise CloakdError(f"user {args.user!r} has no target class yet: run 'cloakd target choose --user "
                              f"{args.user} --photos REFERENCE_PHOTOS' (or 'cloakd enrol') first")
        return stored.name, TargetBank.load().point(stored.name, stored.centroid)
    refs = describe_photos(analyzer, list(args.photos), warn=False)
    if len(refs) == 0:
        return None, None
    bank = TargetBank.load()
    choice = choose_target(bank, refs, rng=np.random.default_rng(args.seed))
    print(f"target class for this run: {choice.name} (not persisted; use --user for a lasting one)", file=sys.stderr)
    return choice.name, bank.point(choice.name)


def run(args) -> int:
    from cloakd.core.protect import ProtectRequest, protect
    from cloakd.daemon.files import write_new_file

    keep = resolve(args.keep)
    analyzer = load_analyzer()
    name, centroid = _target(args, analyzer)
    references = None
    if args.user:
        from cloakd.daemon.references import ReferenceStore

        references = ReferenceStore(args.state_dir, analyzer.extractor.name).get(args.user)
        if references is None:
            print(f"cloakd: {args.user} is not enrolled: every face is cloaked towards the target class "
                  f"('cloakd enrol --user {args.user} PHOTOS' singles out the user's face)", file=sys.stderr)
    request = ProtectRequest(target=centroid, references=references, others=args.others, mode=args.mode, keep=keep,
                             options=OutputOptions(heif_as=args.heic_as.upper()), seed=args.seed,
                             rho=args.rho, steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.photos:
        try:
            result = protect(analyzer, path.read_bytes(), request, label=str(path))
            out = write_new_file(args.out, path.stem, result.extension, result.data) if result.ok else None
        except (CloakdError, OSError) as e:
            failed += 1
            msg = f"{e.filename or path}: {e.strerror}" if isinstance(e, OSError) else str(e)
            print(f"cloakd: error: {msg}", file=sys.stderr)
            continue
        failed += not result.ok
        _report(args, path, out, result, name)
    return 2 if failed else 0


def _report(args, path: Path, out: Path | None, result, target: str | None) -> None:
    if args.json:
        print(json.dumps({"photo": str(path), "output": str(out) if out else None, "protected": result.ok,
                          "target": target, "reason": result.reason, "seconds": round(result.seconds, 2),
                          "faces": [f.as_dict() for f in result.faces]}))
        return
    verdict = "protected" if result.ok else "NOT PROTECTED, nothing written"
    print(f"{path} -> {out or '-'}: {len(result.faces)} face(s), {verdict}, {result.seconds:.1f} s")
    for i, f in enumerate(result.faces, 1):
        if f.role == "left":
            print(f"  face {i}: left as is (not the user's)")
            continue
        shift = f"moved {f.moved:.3f}" if f.moved is not None else ""
        towards = (f", to target {f.to_target_before:.3f} -> {f.to_target_after:.3f}"
                   if f.to_target_after is not None else "")
        ok = "verified" if f.verified else f"FAILED: {f.reason}"
        print(f"  face {i} ({f.role}, {f.mode}): DSSIM {f.dssim:.4f}, {shift}{towards}: {ok}")
    if not result.ok:
        print(f"  reason: {result.reason}", file=sys.stderr)
