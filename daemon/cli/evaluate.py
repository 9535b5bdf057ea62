"""``cloakd evaluate DATASET_DIR``: the paper's protection measurement on a folder of identities.

For several user identities (sub-folders of DATASET_DIR), the user's training photos go through the
real pipeline (``cloakd protect``: detect, cloak towards the user's eq.-3 target, strip, verify). A
tracker then trains on descriptors of every identity, the user's being those of the cloaked files, and
is asked about the user's clean test photos. Reported: protection success rate (PSR), normal accuracy on
the other identities, DSSIM and PSNR, on the files as written and after the processing of an upload
platform (downscale to 1080 px on the long side, JPEG quality 75). The tracker's extractor is cloakd's
default extractor, i.e. the one the cloak is optimised against: this measures the best case; see the
README for what it does not show.

The leaked-photos experiment (Fawkes section 7.2, figure 10): the tracker also holds a ratio r of the
user's training photos uncloaked (leaks, other people's posts), and, with ``--sybil-candidates``, the
user runs a Sybil account: Sybil images (candidates cloaked towards the user's uncloaked features, see
``cloakd sybil``) that the tracker trains on as a second identity. PSR is reported for every r, without
and with the Sybil images.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cloakd.core.cloak.presets import DEFAULT_PRESET, PRESETS
from cloakd.core.errors import CloakdError

from ..config import MODES
from .exits import Exit
from .models import load_analyzer
from .options import add_command, number
from .progress import Progress
from .targets import photo_files


def register(sub) -> None:
    p = add_command(sub, "evaluate", summary="measure how well the cloak protects, on a folder of identities",
                    description="Measure protection as the Fawkes paper does. Some identities of DATASET_DIR "
                                "(one sub-folder of photos per person) act as users: their training photos are "
                                "cloaked, a tracker trains a face recogniser on every identity's photos, and "
                                "is then asked about the users' clean photos. Reported: the protection success "
                                "rate (PSR: how often the tracker fails to recognise a user), its accuracy on "
                                "everyone else, and how much the photos changed (DSSIM, PSNR); also with some "
                                "of the user's photos leaked uncloaked, and with Sybil images. The tracker uses "
                                "the feature extractor the cloak is made against: this is the best case.",
                    example="cloakd evaluate ../shared/data/faces --users 5")
    p.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="a folder with one sub-folder of photos "
                   "per identity")
    p.add_argument("--users", type=number(int, 1), default=5,
                   help="how many identities act as users (default %(default)s)")
    p.add_argument("--train", type=number(int, 1), default=8,
                   help="user photos cloaked for the tracker (default %(default)s)")
    p.add_argument("--mode", default=DEFAULT_PRESET, choices=MODES, help="cloak strength (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which identities are users, and the cloaks' randomness "
                   "(default %(default)s)")
    p.add_argument("--leaked", default="0,0.1,0.2,0.4", type=_ratios, metavar="R,R,...",
                   help="ratios of the user's training photos the tracker holds uncloaked (default %(default)s)")
    p.add_argument("--sybil-candidates", type=Path, metavar="DIR",
                   help="photos (one face each) to make Sybil images from; enables the Sybil columns")
    p.add_argument("--sybil-images", type=number(int, 0), help="Sybil images per user (default: as many as --train)")
    p.add_argument("--sybil-tries", type=number(int, 1), default=3,
                   help="candidates cloaked per Sybil image, best kept "
                   "(default %(default)s)")
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


def upload_processing(data: bytes, long_side: int = 1080, quality: int = 75) -> bytes:
    """What a platform does: downscale to ``long_side`` (never up) and recompress as JPEG."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = long_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _main_descriptor(analyzer, pixels: np.ndarray) -> np.ndarray | None:
    from cloakd.core.faces import main_face

    face = main_face(analyzer.analyse(pixels))
    return None if face is None else face.descriptor


def _decode_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


VARIANTS = ("written", "uploaded")


def _descriptors(analyzer, data: bytes) -> dict[str, np.ndarray | None]:
    """The main face's descriptor of a published file, as written and after upload processing."""
    return {"written": _main_descriptor(analyzer, _decode_rgb(data)),
            "uploaded": _main_descriptor(analyzer, _decode_rgb(upload_processing(data)))}


def _sybil_images(analyzer, pool, train: np.ndarray, args, log, progress) -> list[dict[str, np.ndarray | None]]:
    """Make the user's Sybil images from ``pool`` (each candidate used once); their descriptors."""
    from cloakd.core.sybil import make_sybil, sybil_target

    count = args.train if args.sybil_images is None else args.sybil_images
    out, used = [], set()
    for k in range(count):
        free = [c for c in pool if c.label not in used]
        res = make_sybil(analyzer, free, sybil_target(train), references=train, tries=args.sybil_tries,
                         mode=args.mode, seed=args.seed + k)
        progress.advance()
        if not res.ok:
            log(f"cloakd: no Sybil image {k + 1}: {res.reason}")
            continue
        log(f"cloakd: Sybil image {k + 1}: {Path(res.label).name}, {res.start:.2f} -> {res.distance:.2f} "
            "from the user's features")
        used.add(res.label)  # a published candidate is not used twice; the others stay available
        out.append(_descriptors(analyzer, res.data))
    return out


def run(args) -> int:
    from cloakd.core.evaluate import TRACKERS, psnr, score_tracker
    from cloakd.core.protect import ProtectRequest, protect
    from cloakd.core.sybil import Candidate, describe_candidates
    from cloakd.core.targets import TargetBank, choose_target

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    t0 = time.perf_counter()
    if not args.dataset.is_dir():
        raise CloakdError(f"{args.dataset}: no such folder of identity sub-folders")
    analyzer = load_analyzer()
    people = {p.name: photo_files(p) for p in sorted(args.dataset.iterdir()) if p.is_dir()}
    people = {k: v for k, v in people.items() if len(v) >= args.train + 2}
    if len(people) < 3:
        raise CloakdError(f"{args.dataset}: needs at least 3 identity folders with {args.train + 2}+ photos each")
    pool = None
    if args.sybil_candidates is not None:
        files = photo_files(args.sybil_candidates)
        if not files:
            raise CloakdError(f"{args.sybil_candidates}: no candidate photos for Sybil images")
        pool = describe_candidates(analyzer, [Candidate(str(f), f.read_bytes()) for f in files])
    # clean descriptors of every photo (the tracker's view of the world)
    clean: dict[str, list[tuple[Path, np.ndarray]]] = {}
    with Progress("evaluate: describing", sum(map(len, people.values()))) as progress:
        for name, files in people.items():
            rows = []
            for f in files:
                rows.append((f, _main_descriptor(analyzer, _decode_rgb(f.read_bytes()))))
                progress.advance()
            clean[name] = [(f, d) for f, d in rows if d is not None]
    rng = np.random.default_rng(args.seed)
    eligible = sorted(n for n, rows in clean.items() if len(rows) >= args.train + 2)
    users = list(rng.choice(eligible, size=min(args.users, len(eligible)), replace=False))
    bank = TargetBank.load()

    results = {(t, v): [] for t in TRACKERS for v in VARIANTS}
    leaked = {(t, v, r, sy): [] for t in TRACKERS for v in VARIANTS for r in args.leaked for sy in (False, True)}
    dssims, psnrs, held, cloaked_count, sybil_count = [], [], 0, 0, 0
    sybil_per_user = (args.train if args.sybil_images is None else args.sybil_images) if pool is not None else 0
    with Progress("evaluate: cloaking", len(users) * (args.train + sybil_per_user)) as progress:
        for user in users:
            train, test = clean[user][: args.train], clean[user][args.train :]
            train_x = np.stack([d for _, d in train])
            target = choose_target(bank, train_x, rng=np.random.default_rng([args.seed, len(user)]))
            request = ProtectRequest(target=bank.point(target.name), mode=args.mode, seed=args.seed)
            cloaked: list[dict[str, np.ndarray | None] | None] = []  # per training photo; None: held back
            for path, _ in train:
                original = path.read_bytes()
                result = protect(analyzer, original, request, label=str(path))
                progress.advance()
                if not result.ok:
                    held += 1  # the service would hold it back: the tracker never sees it
                    log(f"cloakd: held {path.name}: {result.reason}")
                    cloaked.append(None)
                    continue
                cloaked_count += 1
                dssims += [f.dssim for f in result.faces if f.role == "user"]
                psnrs.append(psnr(_decode_rgb(original), _decode_rgb(result.data)))
                cloaked.append(_descriptors(analyzer, result.data))
            sybil = _sybil_images(analyzer, pool, train_x, args, log, progress) if pool is not None else []
            sybil_count += len(sybil)
            others = [n for n in clean if n != user]
            o_train = [(d, n) for n in others for _, d in clean[n][: args.train]]
            o_test = [(d, n) for n in others for _, d in clean[n][args.train :]]
            ux = np.stack([d for _, d in test])
            ox, oy = np.stack([d for d, _ in o_test]), np.array([n for _, n in o_test])

            def score(tracker: str, user_x: list[np.ndarray], sybil_x: list[np.ndarray]):
                x = np.stack([d for d, _ in o_train] + user_x + sybil_x)
                y = np.array([n for _, n in o_train] + [user] * len(user_x) + [f"{user} (Sybil)"] * len(sybil_x))
                return score_tracker(tracker, x, y, user, ux, ox, oy)

            for variant in VARIANTS:
                mine = [c[variant] for c in cloaked if c is not None and c[variant] is not None]
                syb = [s[variant] for s in sybil if s[variant] is not None]
                for tracker in TRACKERS:
                    if mine:
                        results[(tracker, variant)].append(score(tracker, mine, []))
                    for r in args.leaked:
                        n_leak = int(round(r * len(train)))
                        user_x = [d for _, d in train[:n_leak]]  # leaked: the same photos, uncloaked
                        user_x += [c[variant] for c in cloaked[n_leak:] if c is not None and c[variant] is not None]
                        leaked[(tracker, variant, r, False)].append(score(tracker, user_x, []))
                        if syb:
                            leaked[(tracker, variant, r, True)].append(score(tracker, user_x, syb))

    summary = {
        "users": users, "mode": args.mode, "train_per_user": args.train, "cloaked": cloaked_count, "held": held,
        "median_dssim": float(np.median(dssims)) if dssims else None, "rho": PRESETS[args.mode].rho,
        "median_psnr": float(np.median(psnrs)) if psnrs else None, "sybil_images": sybil_count,
        "seconds": round(time.perf_counter() - t0, 1),
        "trackers": {f"{t}/{v}": _mean(r) for (t, v), r in results.items() if r},
        "leaked": [{"tracker": t, "files": v, "r": r, "sybil": sy, **_mean(res)}
                   for (t, v, r, sy), res in leaked.items() if res],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_tables(summary, pool is not None)
    return Exit.OK


def _mean(scores) -> dict:
    return {"psr": float(np.mean([s.psr for s in scores])),
            "normal_accuracy": float(np.mean([s.normal_accuracy for s in scores]))}


def _print_tables(summary: dict, with_sybil: bool) -> None:
    label = {"written": "as written", "uploaded": "after JPEG 75 + 1080 px"}
    print(f"users: {', '.join(summary['users'])}; mode {summary['mode']} (rho {summary['rho']}); "
          f"{summary['cloaked']} photos cloaked, {summary['held']} held; median DSSIM {summary['median_dssim']:.4f}, "
          f"median PSNR {summary['median_psnr']:.1f} dB; {summary['sybil_images']} Sybil images; "
          f"{summary['seconds']} s")
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
