"""``cloakd protect PHOTO_OR_FOLDER... --out DIR [--recursive] [--user NAME] [--mode mid]``: cloaked, clean
copies, verified.

With ``--user`` the user's persistent target class is used (``cloakd enrol`` or ``cloakd target choose``
sets it), and, if the user is enrolled, only the face that matches the user's references is cloaked
towards it; other faces follow ``--others``. Without ``--user``, a target is chosen for this run only, by
eq. 3 from the faces in the given photos that clear the stricter bar of core/plausible.py, and printed with
the photos it came from, and every face is cloaked towards it. Only detections that pass the plausibility
check count as faces; the others are listed, never cloaked. Folders: daemon/cli/batch.py. Every
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
from ..words import count
from .batch import Item, Summary, add_inputs, folder_for, items
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

#: what a target class is, in a few words (protect's output)
TARGET_CLASS = "target class (the public identity your faces are made to look like to a recogniser)"
#: the outcomes a batch's summary line counts
OUTCOMES = ("protected", "metadata only", "failed")

if TYPE_CHECKING:
    from cloakd.core.targets import TargetBank

#: what each mode buys, one line each, from the README's tables (bench/transfer.py: share of a user's clean
#: photos a tracker trained on the cloaked ones fails to recognise, after JPEG 75 + 1080 px; butteraugli:
#: how visible, < 1 invisible)
MODE_WORDS = {
    "low": "butteraugli 2.0; dlib's recogniser fooled on 34% of your photos, the others hardly at all",
    "mid": "default; butteraugli 2.9; dlib's recogniser 90%, three other recognisers 7-19% (no cloak: 4-7%)",
    "high": "butteraugli 3.3; dlib's recogniser 100%, the others 7-22%",
    "strong": "butteraugli 4.4, visible; against five recognisers: dlib's 79%, three others 13-35%",
    "max": "butteraugli 5.0, glaring; against five recognisers: dlib's 89%, three others 17-38%",
    "paper": "low with the Fawkes paper's 1000 steps: slow, for comparison",
}
MODES_HELP = "modes (README, 'What the cloak protects against', has the tables):\n" + "\n".join(
    f"  {m:<7} {MODE_WORDS[m]}" for m in MODE_WORDS
)


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
        example="cloakd protect holiday.jpg party.heic trip/ --out ready --user alice",
        notes=MODES_HELP,
    )
    add_inputs(p, "photos", "photos to protect")
    add_output_options(p, "the protected copies")
    p.add_argument("--user", help="protect as this user: their lasting target class and enrolled face (cloakd enrol)")
    p.add_argument(
        "--mode",
        default=DEFAULT_PRESET,
        choices=MODES,
        help="cloak strength (default %(default)s; what each buys: below)",
    )
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


def _target(args, analyzer, photos: list[Path]) -> tuple[str | None, np.ndarray | None, "TargetBank"]:
    """(name, stored primary centroid or None, bank) of the user's stored target, or of one chosen now from
    the photos' faces that clear the stricter bar (name None: no such face to choose it from)."""
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
    refs, sources, seen = target_faces(analyzer, photos)
    if len(refs) == 0 and seen:
        from cloakd.core.plausible import TARGET_MIN_SCORE

        print(
            f"cloakd: no {TARGET_CLASS}: no face in these photos is clear enough to choose one from (a "
            f"detection score of at least {TARGET_MIN_SCORE:g} that the recogniser sees as a face); faces are "
            "cloaked away from their own features only",
            file=sys.stderr,
        )
    if len(refs) == 0:
        return None, None, bank
    choice = choose_target(bank, refs, rng=np.random.default_rng(args.seed))
    print(
        f"{TARGET_CLASS}: {choice.name}, chosen from the faces in {_names(sources)} for this run only "
        "(--user keeps one for good)",
        file=sys.stderr,
    )
    return choice.name, None, bank


def target_faces(analyzer, paths: list[Path]) -> tuple[np.ndarray, list[Path], int]:
    """The descriptor of the main face of each photo among its faces fit to choose a target class from, the
    photos they came from, and how many faces the photos have in all. Unreadable photos are passed over (they
    fail in the main loop)."""
    from cloakd.core.faces import main_face

    descriptors, sources, seen = [], [], 0
    for path in paths:
        try:
            _, faces = analyzer.read(path.read_bytes(), str(path))
        except (CloakdError, OSError):
            continue
        seen += len(faces)
        face = main_face([f for f in faces if f.fit_for_target])
        if face is not None:
            descriptors.append(face.descriptor)
            sources.append(path)
    return np.array(descriptors, np.float32).reshape(-1, analyzer.extractor.dim), sources, seen


def _names(paths: list[Path], shown: int = 3) -> str:
    """``a.jpg``, ``a.jpg, b.jpg`` ... ``a.jpg, b.jpg, c.jpg and 4 more photos``."""
    names = ", ".join(str(p) for p in paths[:shown])
    return names + (f" and {count(len(paths) - shown, 'more photo')}" if len(paths) > shown else "")


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
    from cloakd.core import request_for_target

    keep, options = output_settings(args)
    args.state = state_dir(args) if args.user else None
    out = output_folder(args.out)
    previews = output_folder(args.preview) if args.preview else None
    batch, bad_inputs = items(args.photos, out, args.recursive)
    summary = Summary(OUTCOMES)
    analyzer = load_analyzer(cloaks=True)
    name, centroid, bank = _target(args, analyzer, [item.path for item in batch])
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
    with Progress("protect", len(batch)) as progress:
        for item in batch:
            summary.add(_protect_one(args, analyzer, request, item, previews, name))
            progress.advance()
    print(summary.line(), file=sys.stderr if args.json else sys.stdout)
    return Exit.FAILED if bad_inputs or summary.counts.get("failed") else Exit.OK


def _protect_one(args, analyzer, request, item: Item, previews: Path | None, target: str | None) -> str:
    """Protect one photo of the batch and report it; its outcome for the summary (one of OUTCOMES)."""
    from cloakd.core import protect
    from cloakd.daemon.files import write_new_file

    path = item.path
    try:
        data = path.read_bytes()
        result = protect(analyzer, data, request, label=str(path))
        written = write_new_file(folder_for(item), path.stem, result.extension, result.data) if result.ok else None
        preview = _preview(analyzer, previews, path, data, result) if written and previews else None
    except (CloakdError, OSError) as e:
        fail(path, e)
        return "failed"
    _report(args, path, written, preview, result, target)
    if not result.ok:
        return "failed"
    return "protected" if cloaked_faces(result) else "metadata only"


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
    doubted = f" ({count(len(result.rejected), 'detection')} not counted as a face)" if result.rejected else ""
    if not result.ok:
        return f"{count(faces, 'face')}{doubted}, NOT PROTECTED, nothing written"
    if faces == 0:
        return f"no face found{doubted}: metadata stripped only"
    if cloaked == 0:
        whose = f"none is {user}'s and --others leave" if user else "--others leave"
        return f"{count(faces, 'face')}{doubted}, none cloaked ({whose}): metadata stripped only"
    left = faces - cloaked
    return (
        f"{count(faces, 'face')}{doubted}, {cloaked} cloaked{f', {left} left as they are' if left else ''}: protected"
    )


def face_label(i: int, face, user: str | None) -> str:
    """``face 2 (score 0.998, mid)``; with ``--user``, whose face it is: ``face 1 (alice, score 0.998, mid)``,
    ``face 2 (not alice, score 0.991)``. Without ``--user`` nobody is singled out: faces are numbered."""
    whose = [] if not user else [user if face.role == "user" else f"not {user}"]
    mode = [face.mode] if face.role != "left" and face.mode else []
    return f"face {i} ({', '.join(whose + [f'score {face.score:.3f}'] + mode)})"


def _report(args, path: Path, out: Path | None, preview: Path | None, result, target: str | None) -> None:
    if args.json:
        _report_json(path, out, preview, result, target)
        return
    print(f"{path} -> {out or '-'}: {outcome(result, args.user)}, {result.seconds:.1f} s")
    for i, f in enumerate(result.faces, 1):
        print(f"  {face_label(i, f, args.user)}: {_verdict(f)}")
    for r in result.rejected:
        x1, y1, x2, y2 = (round(float(v)) for v in r.box)
        print(f"  not counted as a face, not cloaked (score {r.score:.3f} at {x1},{y1}-{x2},{y2}): {r.reason}")
    if preview:
        print(f"  preview: {preview}")
    if not result.ok:
        print(f"  reason: {result.reason}", file=sys.stderr)


#: the region protect's DSSIM is measured over (the preview measures the region it shows, and says so)
CLOAK_REGION = "over the cloaked region"


def _verdict(f) -> str:
    """What the cloak did to one face."""
    if f.role == "left":
        return "left as is"
    shift = f"moved {f.moved:.3f}" if f.moved is not None else ""
    towards = (
        f", to target {f.to_target_before:.3f} -> {f.to_target_after:.3f}" if f.to_target_after is not None else ""
    )
    ok = "verified" if f.verified else f"FAILED: {f.reason}"
    return f"DSSIM {f.dssim:.4f} {CLOAK_REGION}, {shift}{towards}: {ok}"


def _report_json(path: Path, out: Path | None, preview: Path | None, result, target: str | None) -> None:
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
                "not_faces": [r.as_dict() for r in result.rejected],
            }
        )
    )
