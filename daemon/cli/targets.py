"""``cloakd targets build DIR`` and ``cloakd target show|choose|rotate --user NAME``.

A bank is built from a folder of identity sub-folders (one per public identity, a few photos each).
The user's target class is chosen once from the user's reference photos and kept for good; ``rotate``
changes it deliberately and says what that costs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from cloakd.core.errors import CloakdError
from cloakd.core.targets import DEFAULT_CANDIDATES, TargetBank

from .models import load_analyzer

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".tif", ".tiff"}
DEFAULT_STATE_DIR = "/var/lib/cloakd"


def register(sub) -> None:
    p = sub.add_parser("targets", help="build a target bank from a folder of identities")
    tsub = p.add_subparsers(dest="targets_command", metavar="ACTION", required=True)
    b = tsub.add_parser("build", help="describe every identity sub-folder of DIR into a bank file")
    b.add_argument("dir", type=Path, metavar="DIR")
    b.add_argument("--out", type=Path, required=True, help="bank file to write (.npz)")
    b.set_defaults(func=build)

    t = sub.add_parser("target", help="show, choose or rotate a user's persistent target class")
    t.add_argument("action", choices=["show", "choose", "rotate"])
    t.add_argument("--user", required=True)
    t.add_argument("--photos", type=Path, help="the user's reference photos (file or folder), for choose/rotate")
    t.add_argument("--state-dir", type=Path, default=Path(os.environ.get("CLOAKD_STATE_DIR", DEFAULT_STATE_DIR)))
    t.add_argument("--bank", type=Path, help="target bank file (default: the bank shipped with cloakd)")
    t.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES, help="K of eq. 3 (default %(default)s)")
    t.set_defaults(func=target)


def photo_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CloakdError(f"{path}: no such file or folder")
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())


def describe_photos(analyzer, paths: list[Path], *, warn=True) -> np.ndarray:
    """One descriptor per photo (its main face); photos without a face or unreadable ones are skipped."""
    from cloakd.core.faces import main_face
    from cloakd.core.photo.decode import decode_file

    out = []
    for p in paths:
        try:
            photo = decode_file(p)
        except CloakdError as e:
            if warn:
                print(f"cloakd: skipping {p}: {e}", file=sys.stderr)
            continue
        face = main_face(analyzer.analyse(photo.rgb))
        if face is None:
            if warn:
                print(f"cloakd: skipping {p}: no face found", file=sys.stderr)
            continue
        out.append(face.descriptor)
    return np.array(out, np.float32).reshape(-1, analyzer.extractor.dim)


def build(args) -> int:
    """Describe each identity's photos (their main face) with every extractor the cloak uses: target
    classes are chosen in the primary extractor's space and pursued in every extractor's."""
    from cloakd.core.faces import main_face

    if not args.dir.is_dir():
        raise CloakdError(f"{args.dir}: not a folder of identity sub-folders")
    analyzer = load_analyzer()
    primary = analyzer.extractor.name
    names, spaces = [], {e.name: [] for e in analyzer.cloak_extractors}
    for person in sorted(p for p in args.dir.iterdir() if p.is_dir()):
        rows = []
        for path in photo_files(person):
            try:
                rgb, faces = analyzer.read(path.read_bytes(), str(path))
            except (CloakdError, OSError):
                continue
            if (face := main_face(faces)) is not None:
                rows.append({k: v[0] for k, v in analyzer.describe_all(rgb, [face]).items()})
        if rows:
            names.append(person.name)
            for k in spaces:
                spaces[k].append(np.stack([r[k] for r in rows]).astype(np.float32))
        else:
            print(f"cloakd: skipping identity {person.name}: no usable face", file=sys.stderr)
    if not names:
        raise CloakdError(f"{args.dir}: no identity with a usable face photo")
    primary_descriptors = spaces.pop(primary)
    bank = TargetBank(names, primary_descriptors, primary, spaces)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(bank.to_bytes())
    print(f"{args.out}: {len(names)} identities, {sum(len(d) for d in primary_descriptors)} photos, extractor "
          f"{primary}" + (f" (also described by {', '.join(spaces)})" if spaces else ""))
    return 0


def target(args) -> int:
    from cloakd.daemon.targets import TargetStore

    bank = TargetBank.load(args.bank) if args.bank else None
    store = TargetStore(args.state_dir, bank)
    if args.action == "show":
        t = store.get(args.user)
        if t is None:
            print(f"{args.user}: no target class chosen yet")
            return 1
        print(f"{args.user}: target class {t.name} (chosen {t.chosen_at}, min distance to the user's photos "
              f"{t.min_distance:.3f}, extractor {t.extractor}, bank {t.bank})")
        if t.previous:
            print(f"  previous targets: {', '.join(t.previous)}")
        return 0
    if args.photos is None:
        raise CloakdError(f"'cloakd target {args.action}' needs the user's reference photos: --photos FILE_OR_DIR")
    refs = describe_photos(load_analyzer(), photo_files(args.photos))
    if len(refs) == 0:
        raise CloakdError(f"{args.photos}: no photo with a usable face")
    if args.action == "choose":
        t = store.choose(args.user, refs, k=args.candidates)
    else:
        t, warning = store.rotate(args.user, refs, k=args.candidates)
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.user}: target class {t.name} (min distance to {len(refs)} reference photos {t.min_distance:.3f})")
    return 0
