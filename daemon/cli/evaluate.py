"""``cloakd evaluate DATASET_DIR``: the paper's protection measurement on a folder of identities.

The experiment itself is core/evaluate.py (:func:`cloakd.core.evaluate.evaluate`, which says what it
measures and what it does not); this command reads the folders, shows progress and prints the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from cloakd.core.cloak.presets import DEFAULT_PRESET
from cloakd.core.errors import CloakdError
from cloakd.core.photo.discover import photo_files

from ..config import MODES
from .exits import Exit
from .models import load_analyzer
from .options import add_command, number
from .progress import Progress


def register(sub) -> None:
    p = add_command(
        sub,
        "evaluate",
        summary="measure how well the cloak protects, on a folder of identities",
        description="Measure protection as the Fawkes paper does. Some identities of DATASET_DIR "
        "(one sub-folder of photos per person) act as users: their training photos are "
        "cloaked, a tracker trains a face recogniser on every identity's photos, and "
        "is then asked about the users' clean photos. Reported: the protection success "
        "rate (PSR: how often the tracker fails to recognise a user), its accuracy on "
        "everyone else, and how much the photos changed (DSSIM, PSNR); also with some "
        "of the user's photos leaked uncloaked, and with Sybil images. The tracker uses "
        "the feature extractor the cloak is made against: this is the best case.",
        example="cloakd evaluate ../shared/data/faces --users 5",
    )
    p.add_argument(
        "dataset", type=Path, metavar="DATASET_DIR", help="a folder with one sub-folder of photos per identity"
    )
    p.add_argument(
        "--users", type=number(int, 1), default=5, help="how many identities act as users (default %(default)s)"
    )
    p.add_argument(
        "--train", type=number(int, 1), default=8, help="user photos cloaked for the tracker (default %(default)s)"
    )
    p.add_argument("--mode", default=DEFAULT_PRESET, choices=MODES, help="cloak strength (default %(default)s)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="which identities are users, and the cloaks' randomness (default %(default)s)",
    )
    p.add_argument(
        "--leaked",
        default="0,0.1,0.2,0.4",
        type=_ratios,
        metavar="R,R,...",
        help="ratios of the user's training photos the tracker holds uncloaked (default %(default)s)",
    )
    p.add_argument(
        "--sybil-candidates",
        type=Path,
        metavar="DIR",
        help="photos (one face each) to make Sybil images from; enables the Sybil columns",
    )
    p.add_argument("--sybil-images", type=number(int, 0), help="Sybil images per user (default: as many as --train)")
    p.add_argument(
        "--sybil-tries",
        type=number(int, 1),
        default=3,
        help="candidates cloaked per Sybil image, best kept (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(func=run)


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected ratios in [0, 1) separated by commas, e.g. 0,0.2")
    return values


def run(args) -> int:
    from cloakd.core.evaluate import Settings, evaluate
    from cloakd.core.targets import TargetBank

    t0 = time.perf_counter()
    if not args.dataset.is_dir():
        raise CloakdError(f"{args.dataset}: no such folder of identity sub-folders")
    settings = Settings(
        users=args.users,
        train=args.train,
        mode=args.mode,
        seed=args.seed,
        leaked=tuple(args.leaked),
        sybil_images=args.sybil_images,
        sybil_tries=args.sybil_tries,
    )
    people = {p.name: photo_files(p) for p in sorted(args.dataset.iterdir()) if p.is_dir()}
    people = {
        name: [(str(f), f.read_bytes()) for f in files]
        for name, files in people.items()
        if len(files) >= settings.min_photos
    }
    candidates = None if args.sybil_candidates is None else _candidates(args.sybil_candidates)
    analyzer = load_analyzer(cloaks=True)
    with _Stages() as progress:
        result = evaluate(
            analyzer,
            people,
            settings,
            bank=TargetBank.load(),
            candidates=candidates,
            progress=progress,
            note=lambda message: print(f"cloakd: {message}", file=sys.stderr),
        )
    summary = {**asdict(result), "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_tables(summary, candidates is not None)
    return Exit.OK


def _candidates(folder: Path) -> list:
    from cloakd.core.sybil import Candidate

    files = photo_files(folder)
    if not files:
        raise CloakdError(f"{folder}: no candidate photos for Sybil images")
    return [Candidate(str(f), f.read_bytes()) for f in files]


class _Stages:
    """The experiment's progress callback: one progress line per stage (``with _Stages() as progress``)."""

    def __init__(self):
        self.stage, self.line = "", None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.line = stage, Progress(f"evaluate: {stage}", total).__enter__()
        if done:
            self.line.advance()

    def close(self) -> None:
        if self.line is not None:
            self.line.__exit__(None, None, None)
            self.line = None

    def __enter__(self) -> "_Stages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _print_tables(summary: dict, with_sybil: bool) -> None:
    label = {"written": "as written", "uploaded": "after JPEG 75 + 1080 px"}
    print(
        f"users: {', '.join(summary['users'])}; mode {summary['mode']} (rho {summary['rho']}); "
        f"{summary['cloaked']} photos cloaked, {summary['held']} held; median DSSIM {summary['median_dssim']:.4f}, "
        f"median PSNR {summary['median_psnr']:.1f} dB; {summary['sybil_images']} Sybil images; "
        f"{summary['seconds']} s"
    )
    print("| tracker | files | PSR | normal accuracy |\n| --- | --- | --- | --- |")
    for key, s in summary["trackers"].items():
        t, v = key.split("/")
        print(f"| {t} | {label[v]} | {s['psr']:.1%} | {s['normal_accuracy']:.1%} |")
    rows: dict[tuple, dict] = {}
    for e in summary["leaked"]:
        rows.setdefault((e["files"], e["r"]), {})[(e["tracker"], e["sybil"])] = e["psr"]
    cols = [(t, sy) for t in ("linear", "centroid") for sy in ((False, True) if with_sybil else (False,))]
    print()
    print("| files | leaked r | " + " | ".join(f"PSR {t}{' + Sybil' if sy else ''}" for t, sy in cols) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in cols) + " |")
    for (v, r), psr in rows.items():
        print(f"| {label[v]} | {r:g} | " + " | ".join(f"{psr[c]:.1%}" if c in psr else "-" for c in cols) + " |")
