"""``cloakd sybil --user NAME --candidates DIR --out DIR [--count N]``: Sybil images now, in the foreground.

The same code as the service's background job (daemon/sybil.py), with this process's rights: candidates
are photos of one face each (a consenting person, generated faces), each used once (the user's record in
the state directory says which were used, shared with the service); every image is cloaked towards the
user's enrolled features, verified, stripped, and written without replacing anything. The user must be
enrolled first (``cloakd enrol``): the images are pulled towards the user's own features.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cloakd.core.errors import CloakdError

from ..config import MODES
from .models import load_analyzer
from .targets import DEFAULT_STATE_DIR


def register(sub) -> None:
    p = sub.add_parser("sybil", help="make Sybil images for a user from candidate photos (paper section 7.2)",
                       description=__doc__)
    p.add_argument("--user", required=True)
    p.add_argument("--candidates", type=Path, required=True, metavar="DIR",
                   help="photos of one face each (one consenting person or generated faces)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the Sybil images")
    p.add_argument("--count", type=int, default=1, metavar="N", help="images to make (default %(default)s)")
    p.add_argument("--mode", default="mid", choices=MODES, help="cloak strength (default %(default)s)")
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("CLOAKD_STATE_DIR", DEFAULT_STATE_DIR)))
    p.set_defaults(func=run)


def run(args) -> int:
    from cloakd.daemon.privileges import Account
    from cloakd.daemon.references import ReferenceStore
    from cloakd.daemon.sybil import SybilRecord, make_one

    if args.count < 1:
        raise CloakdError(f"--count {args.count}: make at least 1 image")
    if not ReferenceStore(args.state_dir, "").path(args.user).exists():  # before the models take seconds to load
        raise CloakdError(f"user {args.user!r} is not enrolled in {args.state_dir}: Sybil images are pulled towards "
                          f"the user's own features; run 'cloakd enrol --user {args.user} PHOTOS' first")
    if not args.candidates.is_dir():
        raise CloakdError(f"{args.candidates}: no such folder of candidate photos")
    analyzer = load_analyzer()
    references = ReferenceStore(args.state_dir, analyzer.extractor.name).get(args.user)
    if references is None:
        raise CloakdError(f"user {args.user!r} has no enrolled reference photos; run 'cloakd enrol --user "
                          f"{args.user} PHOTOS' first")
    record = SybilRecord(args.state_dir, args.user)
    candidates, out = args.candidates.absolute(), args.out.absolute()  # the record outlives this directory
    made, told = 0, set()
    while made < args.count:
        try:
            outcome = make_one(analyzer, Account.current(), candidates, out, references, record, mode=args.mode)
        except OSError as e:  # e.g. the output folder is not writable; what was made so far is recorded
            raise CloakdError(f"{e.filename or out}: {e.strerror or e} ({made} Sybil images made)") from None
        for refused in outcome.refused:
            if refused not in told:  # an unreadable candidate is met again by every run
                told.add(refused)
                print(f"cloakd: not used: {refused[0]}: {refused[1]}", file=sys.stderr)
        if outcome.made is not None:
            made += 1
            m = outcome.made
            print(f"{m.candidate} -> {m.output}: distance to {args.user}'s features {m.distances()}")
        elif outcome.exhausted:
            break
    if made < args.count:
        print(f"cloakd: error: {made} of {args.count} Sybil images made: {outcome.reason}", file=sys.stderr)
        return 2
    return 0
