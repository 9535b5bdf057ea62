"""``cloakd enrol --user NAME PHOTOS_OR_DIR...``: learn whose face is the user's, and fix the target class.

Every photo is described; photos that show exactly one face, consistent with the others (one person),
become the user's reference descriptors, stored in the state directory (descriptors only, never the
photos). Enrolling again adds photos (``--replace`` starts over). The user's persistent target class is
chosen from the references (Fawkes eq. 3) if the user has none yet; an existing one is kept (change it
deliberately with ``cloakd target rotate``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloakd.core.errors import CloakdError
from cloakd.core.photo.discover import photo_files
from cloakd.core.targets import TargetBank

from .exits import Exit, skip
from .models import load_analyzer
from .options import add_command, add_state_options, state_dir
from .progress import Progress


def register(sub) -> None:
    p = add_command(
        sub,
        "enrol",
        summary="teach cloakd which face is yours, from photos of you alone",
        description="Describe photos of the user alone and keep their face descriptors (never the "
        "photos) in the state directory. From then on, in each photo only the user's "
        "face gets the targeted cloak, and the user's target class is chosen from these "
        "photos if it was not chosen yet. Enrolling again adds photos.",
        example="cloakd enrol --user alice ~/Pictures/me/",
    )
    p.add_argument(
        "photos", nargs="+", type=Path, metavar="PHOTOS_OR_DIR", help="photos of the user alone, or folders of them"
    )
    p.add_argument("--user", required=True, help="the user's name, as in the configuration")
    p.add_argument("--replace", action="store_true", help="forget the user's earlier reference photos")
    add_state_options(p)
    p.add_argument("--bank", type=Path, help="target bank file (default: the bank shipped with cloakd)")
    p.set_defaults(func=run)


def describe_for_enrolment(analyzer, paths: list[Path]):
    """Each readable photo as a :class:`Described` (its face count and, for one face, its descriptor);
    the others are skipped, each with one line on stderr."""
    from cloakd.daemon.references import describe

    out = []
    with Progress("enrol", len(paths)) as progress:
        for path in paths:
            try:
                out.append(describe(analyzer, str(path), path.read_bytes()))
            except (CloakdError, OSError) as e:
                skip(path, e)
            progress.advance()
    return out


def run(args) -> int:
    from cloakd.daemon.references import ReferenceStore
    from cloakd.daemon.targets import TargetStore

    state = state_dir(args)
    paths = [p for item in args.photos for p in photo_files(item)]
    if not paths:
        raise CloakdError(f"no photos in {', '.join(map(str, args.photos))}")
    analyzer = load_analyzer()
    store = ReferenceStore(state, analyzer.extractor.name)
    offered = describe_for_enrolment(analyzer, paths)
    if not any(d.faces == 1 for d in offered):
        raise CloakdError(f"nothing enrolled for {args.user}: none of the {len(paths)} photos shows exactly one face")
    refs = store.enrol(args.user, offered, analyzer.extractor.match_threshold, replace=args.replace)
    for r in refs.rejected:
        print(f"cloakd: not used: {r.label}: {r.reason}", file=sys.stderr)
    print(f"{args.user}: {len(refs.descriptors)} reference photos enrolled ({store.path(args.user)})")
    targets = TargetStore(state, TargetBank.load(args.bank) if args.bank else None)
    current = targets.get(args.user)
    if current is None:
        t = targets.choose(args.user, refs.descriptors)
        print(
            f"{args.user}: target class {t.name} chosen (min distance to the references {t.min_distance:.3f}); "
            "it is kept for every later photo"
        )
    else:
        print(
            f"{args.user}: target class {current.name} kept (chosen {current.chosen_at}; "
            "'cloakd target rotate' changes it deliberately)"
        )
    return Exit.OK
