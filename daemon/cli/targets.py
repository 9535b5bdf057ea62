"""``cloakd targets build DIR`` and ``cloakd target show|choose|rotate --user NAME``.

A bank is built from a folder of identity sub-folders (one per public identity, a few photos each).
The user's target class is chosen once from the user's reference photos and kept for good; ``rotate``
changes it deliberately and says what that costs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cloakd.core.errors import CloakdError
from cloakd.core.photo.discover import photo_files
from cloakd.core.targets import DEFAULT_CANDIDATES, TargetBank, build_bank

from .exits import Exit, skip
from .models import load_analyzer
from .options import add_command, add_state_options, number, state_dir


def register(sub) -> None:
    p = add_command(
        sub,
        "targets",
        summary="build a target bank from a folder of identities",
        description="Describe every identity sub-folder of DIR (one folder per person, a few photos "
        "each) into a bank file: the identities a user's target class is chosen from. "
        "cloakd ships a bank; build your own only to use other identities.",
        example="cloakd targets build identities/ --out bank.npz",
    )
    tsub = p.add_subparsers(dest="targets_command", metavar="ACTION", required=True)
    b = add_command(
        tsub,
        "build",
        summary="describe every identity sub-folder of DIR into a bank file",
        description="Describe every identity sub-folder of DIR into a bank file.",
        example="cloakd targets build identities/ --out bank.npz",
    )
    b.add_argument("dir", type=Path, metavar="DIR", help="a folder with one sub-folder of photos per identity")
    b.add_argument("--out", type=Path, required=True, metavar="BANK", help="bank file to write (.npz)")
    b.set_defaults(func=build)

    t = add_command(
        sub,
        "target",
        summary="show, choose or rotate a user's persistent target class",
        description="A user's photos are cloaked towards one target class (another identity), "
        "chosen once from the user's own photos and kept for good: 'show' tells which, "
        "'choose' picks it (enrolling does this too), 'rotate' changes it on purpose, "
        "which weakens the protection of photos already online.",
        example="cloakd target show --user alice",
    )
    t.add_argument("action", choices=["show", "choose", "rotate"], help="what to do")
    t.add_argument("--user", required=True, help="the user's name, as in the configuration")
    t.add_argument("--photos", type=Path, metavar="FILE_OR_DIR", help="photos of the user, for choose and rotate")
    add_state_options(t)
    t.add_argument("--bank", type=Path, help="target bank file (default: the bank shipped with cloakd)")
    t.add_argument(
        "--candidates",
        type=number(int, 1),
        default=DEFAULT_CANDIDATES,
        help="how many random identities of the bank are compared (K of the Fawkes paper's eq. 3; default %(default)s)",
    )
    t.set_defaults(func=target)


def describe_photos(analyzer, paths: list[Path], *, warn=True) -> np.ndarray:
    """One descriptor per photo (its main face); photos without a face, missing or unreadable ones are skipped
    (said on stderr with ``warn``)."""
    from cloakd.core.faces import main_face

    out = []
    for p in paths:
        try:
            _, faces = analyzer.read(p.read_bytes(), str(p))
        except (CloakdError, OSError) as e:
            if warn:
                skip(p, e)
            continue
        face = main_face(faces)
        if face is None:
            if warn:
                print(f"cloakd: skipping {p}: no face found", file=sys.stderr)
            continue
        out.append(face.descriptor)
    return np.array(out, np.float32).reshape(-1, analyzer.extractor.dim)


def build(args) -> int:
    """Describe each identity's photos (their main face) with every extractor the cloak uses: target
    classes are chosen in the primary extractor's space and pursued in every extractor's."""
    bank = build_bank(load_analyzer(), args.dir, on_skip=lambda why: print(f"cloakd: {why}", file=sys.stderr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(bank.to_bytes())
    print(
        f"{args.out}: {len(bank.names)} identities, {sum(len(d) for d in bank.descriptors)} photos, extractor "
        f"{bank.extractor}" + (f" (also described by {', '.join(bank.spaces)})" if bank.spaces else "")
    )
    return Exit.OK


def target(args) -> int:
    from cloakd.daemon.targets import TargetStore

    bank = TargetBank.load(args.bank) if args.bank else None
    store = TargetStore(state_dir(args), bank)
    if args.action == "show":
        t = store.get(args.user)
        if t is None:
            print(f"{args.user}: no target class chosen yet")
            return Exit.NOTHING
        print(
            f"{args.user}: target class {t.name} (chosen {t.chosen_at}, min distance to the user's photos "
            f"{t.min_distance:.3f}, extractor {t.extractor}, bank {t.bank})"
        )
        if t.previous:
            print(f"  previous targets: {', '.join(t.previous)}")
        return Exit.OK
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
    return Exit.OK
