"""``cloakd sybil --user NAME --candidates DIR --out DIR [--count N]``: Sybil images now, in the foreground.

The same code as the service's background job (daemon/sybil.py), with this process's rights: candidates
are photos of one face each (a consenting person, generated faces), each used once (the user's record in
the state directory says which were used, shared with the service); every image is cloaked towards the
user's enrolled features, verified, stripped, and written without replacing anything. The user must be
enrolled first (``cloakd enrol``): the images are pulled towards the user's own features.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloakd.core.cloak.presets import DEFAULT_PRESET
from cloakd.core.errors import CloakdError, os_error_text

from ..config import MODES
from .exits import Exit
from .models import load_analyzer
from .options import add_command, add_out_option, add_state_options, number, output_folder, state_dir
from .progress import Progress


def register(sub) -> None:
    p = add_command(
        sub,
        "sybil",
        summary="make Sybil images for a user (for a second account; Fawkes section 7.2)",
        description="Make Sybil images for an enrolled user: photos of other faces (one consenting "
        "person, or generated faces), cloaked towards the user's own features, to be "
        "uploaded from a second account. They help when clean photos of the user are "
        "already online. Each candidate photo is used once.",
        example="cloakd sybil --user alice --candidates ~/sybil-candidates --out ~/sybil-account --count 3",
    )
    p.add_argument("--user", required=True, help="the enrolled user's name (cloakd enrol)")
    p.add_argument(
        "--candidates",
        type=Path,
        required=True,
        metavar="DIR",
        help="photos of one face each (one consenting person or generated faces)",
    )
    add_out_option(p, "the Sybil images")
    p.add_argument("--count", type=number(int, 1), default=1, metavar="N", help="images to make (default %(default)s)")
    p.add_argument("--mode", default=DEFAULT_PRESET, choices=MODES, help="cloak strength (default %(default)s)")
    add_state_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from cloakd.daemon.privileges import Account
    from cloakd.daemon.references import ReferenceStore
    from cloakd.daemon.sybil import SybilRecord, make_one

    state = state_dir(args)
    if not ReferenceStore(state, "").path(args.user).exists():  # before the models take seconds to load
        raise CloakdError(
            f"user {args.user!r} is not enrolled in {state}: Sybil images are pulled towards "
            f"the user's own features; run 'cloakd enrol --user {args.user} PHOTOS' first"
        )
    if not args.candidates.is_dir():
        raise CloakdError(f"{args.candidates}: no such folder of candidate photos")
    output_folder(args.out)
    analyzer = load_analyzer(cloaks=True)
    references = ReferenceStore(state, analyzer.extractor.name).spaces(args.user)
    if references is None:
        raise CloakdError(
            f"user {args.user!r} has no enrolled reference photos; run 'cloakd enrol --user {args.user} PHOTOS' first"
        )
    record = SybilRecord(state, args.user)
    candidates, out = args.candidates.absolute(), args.out.absolute()  # the record outlives this directory
    images, told = 0, set()
    with Progress("sybil", args.count) as progress:
        while images < args.count:
            try:
                outcome = make_one(analyzer, Account.current(), candidates, out, references, record, mode=args.mode)
            except OSError as e:  # e.g. the output folder is not writable; what was made so far is recorded
                raise CloakdError(f"{os_error_text(e, out)} ({images} Sybil images made)") from None
            for refused in outcome.refused:
                if refused not in told:  # an unreadable candidate is met again by every run
                    told.add(refused)
                    print(f"cloakd: not used: {refused[0]}: {refused[1]}", file=sys.stderr)
            if outcome.made is not None:
                images += 1
                m = outcome.made
                print(f"{m.candidate} -> {m.output}: distance to {args.user}'s features {m.distances()}")
                progress.advance()
            elif outcome.exhausted:
                break
    if images < args.count:
        print(f"cloakd: error: {images} of {args.count} Sybil images made: {outcome.reason}", file=sys.stderr)
        return Exit.FAILED
    return Exit.OK
