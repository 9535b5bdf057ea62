"""``cloakd evaluate DATASET_DIR``: the paper's protection measurement on a folder of identities.

For several user identities (sub-folders of DATASET_DIR), the user's training photos go through the
real pipeline (``cloakd protect``: detect, cloak towards the user's eq.-3 target, strip, verify). A
tracker then trains on descriptors of every identity, the user's being those of the cloaked files, and
is asked about the user's clean test photos. Reported: protection success rate (PSR), normal accuracy on
the other identities, DSSIM and PSNR, on the files as written and after the processing of an upload
platform (downscale to 1080 px on the long side, JPEG quality 75). The tracker's extractor is cloakd's
default extractor, i.e. the one the cloak is optimised against: this measures the best case; see the
README for what it does not show.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cloakd.core.cloak.presets import DEFAULT_PRESET, PRESETS
from cloakd.core.errors import CloakdError

from .models import load_analyzer
from .targets import photo_files


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="measure protection on a folder of identity sub-folders", description=__doc__)
    p.add_argument("dataset", type=Path, metavar="DATASET_DIR")
    p.add_argument("--users", type=int, default=5, help="how many identities act as users (default %(default)s)")
    p.add_argument("--train", type=int, default=8, help="user photos cloaked for the tracker (default %(default)s)")
    p.add_argument("--mode", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


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


def run(args) -> int:
    from cloakd.core.evaluate import TRACKERS, psnr, score_tracker
    from cloakd.core.protect import ProtectRequest, protect
    from cloakd.core.targets import TargetBank, choose_target

    t0 = time.perf_counter()
    analyzer = load_analyzer()
    people = {p.name: photo_files(p) for p in sorted(args.dataset.iterdir()) if p.is_dir()}
    people = {k: v for k, v in people.items() if len(v) >= args.train + 2}
    if len(people) < 3:
        raise CloakdError(f"{args.dataset}: needs at least 3 identity folders with {args.train + 2}+ photos each")
    # clean descriptors of every photo (the tracker's view of the world)
    clean: dict[str, list[tuple[Path, np.ndarray]]] = {}
    for name, files in people.items():
        rows = [(f, _main_descriptor(analyzer, _decode_rgb(f.read_bytes()))) for f in files]
        clean[name] = [(f, d) for f, d in rows if d is not None]
    rng = np.random.default_rng(args.seed)
    eligible = sorted(n for n, rows in clean.items() if len(rows) >= args.train + 2)
    users = list(rng.choice(eligible, size=min(args.users, len(eligible)), replace=False))
    bank = TargetBank.load()

    results = {(t, v): [] for t in TRACKERS for v in ("written", "uploaded")}
    dssims, psnrs, held, cloaked_count = [], [], 0, 0
    for user in users:
        train, test = clean[user][: args.train], clean[user][args.train :]
        target = choose_target(bank, np.stack([d for _, d in train]), rng=np.random.default_rng([args.seed, len(user)]))
        request = ProtectRequest(target=target.centroid, mode=args.mode, seed=args.seed)
        cloaked = {"written": [], "uploaded": []}
        for path, _ in train:
            original = path.read_bytes()
            result = protect(analyzer, original, request, label=str(path))
            if not result.ok:
                held += 1  # the service would hold it back: the tracker never sees it
                print(f"cloakd: held {path.name}: {result.reason}", file=sys.stderr)
                continue
            cloaked_count += 1
            dssims += [f.dssim for f in result.faces if f.role == "user"]
            psnrs.append(psnr(_decode_rgb(original), _decode_rgb(result.data)))
            for variant, data in (("written", result.data), ("uploaded", upload_processing(result.data))):
                d = _main_descriptor(analyzer, _decode_rgb(data))
                if d is not None:
                    cloaked[variant].append(d)
        others = [n for n in clean if n != user]
        o_train = [(d, n) for n in others for _, d in clean[n][: args.train]]
        o_test = [(d, n) for n in others for _, d in clean[n][args.train :]]
        for variant in ("written", "uploaded"):
            if not cloaked[variant]:
                continue
            x = np.stack([d for d, _ in o_train] + cloaked[variant])
            y = np.array([n for _, n in o_train] + [user] * len(cloaked[variant]))
            ux = np.stack([d for _, d in test])
            ox, oy = np.stack([d for d, _ in o_test]), np.array([n for _, n in o_test])
            for tracker in TRACKERS:
                results[(tracker, variant)].append(score_tracker(tracker, x, y, user, ux, ox, oy))

    summary = {
        "users": users, "mode": args.mode, "train_per_user": args.train, "cloaked": cloaked_count, "held": held,
        "median_dssim": float(np.median(dssims)) if dssims else None, "rho": PRESETS[args.mode].rho,
        "median_psnr": float(np.median(psnrs)) if psnrs else None, "seconds": round(time.perf_counter() - t0, 1),
        "trackers": {f"{t}/{v}": {"psr": float(np.mean([s.psr for s in r])),
                                  "normal_accuracy": float(np.mean([s.normal_accuracy for s in r]))}
                     for (t, v), r in results.items() if r},
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"users: {', '.join(users)}; mode {args.mode} (rho {summary['rho']}); {cloaked_count} photos cloaked, "
              f"{held} held; median DSSIM {summary['median_dssim']:.4f}, median PSNR {summary['median_psnr']:.1f} dB; "
              f"{summary['seconds']} s")
        print("| tracker | files | PSR | normal accuracy |\n| --- | --- | --- | --- |")
        for key, s in summary["trackers"].items():
            t, v = key.split("/")
            label = "as written" if v == "written" else "after JPEG 75 + 1080 px"
            print(f"| {t} | {label} | {s['psr']:.1%} | {s['normal_accuracy']:.1%} |")
    return 0
