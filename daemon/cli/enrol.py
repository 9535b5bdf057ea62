"""``cloakd enrol --user NAME PHOTOS_OR_DIR...``: learn whose face is the user's, and fix the target class.

Every photo is described; photos that show exactly one face, consistent with the others (one person),
become the user's reference descriptors, stored in the state directory (descriptors only, never the
photos). Enrolling again adds photos (``--replace`` starts over). The user's persistent target class is
chosen from the references (Fawkes eq. 3) if the user has none yet; an existing one is kept (change it
deliberately with ``cloakd target rotate``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from cloakd.core.errors import CloakdError
from cloakd.core.targets import TargetBank

from .models import load_analyzer
from .targets import DEFAULT_STATE_DIR, photo_files


def register(sub) -> None:
    p = sub.add_parser("enrol", help="enrol a user's reference photos (whose face is theirs) and choose their target",
                       description=__doc__)
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTOS_OR_DIR")
    p.add_argument("--user", required=True)
    p.add_argument("--replace", action="store_true", help="forget the user's earlier reference photos")
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("CLOAKD_STATE_DIR", DEFAULT_STATE_DIR)))
    p.add_argument("--bank", type=Path, help="target bank file (default: the bank shipped with cloakd)")
    p.set_defaults(func=run)


def describe_for_enrolment(analyzer, paths: list[Path]):
    """Each readable photo as a :class:`Described` (its face count and, for one face, its descriptor)."""
    from cloakd.daemon.identity import faces_in
    from cloakd.daemon.references import Described

    out = []
    for path in paths:
        data = path.read_bytes()
        try:
            faces = faces_in(analyzer, data, str(path))
        except CloakdError as e:
            print(f"cloakd: skipping {path}: {e}", file=sys.stderr)
            continue
        desc = faces[0].descriptor if len(faces) == 1 else None
        out.append(Described(str(path), hashlib.sha256(data).hexdigest(), desc, len(faces)))
    return out


def run(args) -> int:
    from cloakd.daemon.references import ReferenceStore
    from cloakd.daemon.targets import TargetStore

    paths = [p for item in args.photos for p in photo_files(item)]
    if not paths:
        raise CloakdError(f"no photos in {', '.join(map(str, args.photos))}")
    analyzer = load_analyzer()
    store = ReferenceStore(args.state_dir, analyzer.extractor.name)
    offered = describe_for_enrolment(analyzer, paths)
    if not any(d.faces == 1 for d in offered):
        raise CloakdError(f"nothing enrolled for {args.user}: none of the {len(paths)} photos shows exactly one face")
    refs = store.enrol(args.user, offered, analyzer.extractor.match_threshold, replace=args.replace)
    for r in refs.rejected:
        print(f"cloakd: not used: {r.label}: {r.reason}", file=sys.stderr)
    print(f"{args.user}: {len(refs.descriptors)} reference photos enrolled ({store.path(args.user)})")
    targets = TargetStore(args.state_dir, TargetBank.load(args.bank) if args.bank else None)
    current = targets.get(args.user)
    if current is None:
        t = targets.choose(args.user, refs.descriptors)
        print(f"{args.user}: target class {t.name} chosen (min distance to the references {t.min_distance:.3f}); "
              "it is kept for every later photo")
    else:
        print(f"{args.user}: target class {current.name} kept (chosen {current.chosen_at}; "
              "'cloakd target rotate' changes it deliberately)")
    return 0
