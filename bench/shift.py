"""How far cloaks move face recognisers: the fast, continuous proxy of PSR used to choose cloak settings.

    .venv/bin/python bench/shift.py --cloak dlib_resnet,sface --held-out omz_reid [--photos 16] [--mode strong]

PSR over a handful of users moves in steps of whole photos; this measures, per photo, how far the cloak
moved each recogniser's description of the face, in that recogniser's own identity gaps (different-person
minus same-person median distance):
``moved`` (from the clean photo's descriptor) and ``gained`` (closer to the target class's centroid), on
the file as written and after JPEG 75. A recogniser the cloak is optimised against shows the white-box
best case; a *held-out* one (an extractor of ours left out of the cloak, or dlib's real pipeline) shows
transfer. Settings are chosen on held-out extractors of our own, never on ../shared/trackers (its rules).

Cloaks are measured unverified (no retry, nothing held: the effect of a setting) unless --verify.
Photos: the first 2 photos of 8 identities of ../shared/data/faces (16 photos), each user's target class
chosen by eq. 3 from its first 6 photos, as bench/transfer.py does.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import DATA, butteraugli, preset_variant  # noqa: E402


def jpeg75(data: bytes) -> np.ndarray:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(buf).convert("RGB"))


def _looser(face, geometry):
    """The face as an aligner with a 15% looser, off-centre crop would see it (landmarks and box moved)."""
    from dataclasses import replace

    lm = face.landmarks.astype(np.float64)
    c = lm.mean(0)
    eyes = np.linalg.norm(lm[1] - lm[0])

    def move(points: np.ndarray) -> np.ndarray:
        return (c + (points - c) * 0.85 + np.array([0.1, 0.1]) * eyes).astype(np.float32)

    moved, box = move(lm), move(face.box.reshape(2, 2).astype(np.float64)).reshape(4)
    return replace(face, landmarks=moved, box=box, transform=geometry.transform(moved, box))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cloak",
        help="extractors the cloak optimises against, the primary (dlib_resnet) first (default: the mode's own; "
        "e.g. --mode mid --cloak dlib_resnet,sface,omz_reid cloaks mid against three)",
    )
    ap.add_argument("--held-out", default="", help="extractors of ours only measured")
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--mode", default="mid")
    ap.add_argument("--rho", type=float)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true", help="verify (retry stronger, hold) as the product does")
    ap.add_argument(
        "--robust",
        type=Path,
        metavar="PATH",
        help="dlib ResNet weights from scripts/train_robust.py, as extractor dlib_resnet_robust "
        "(targets: dlib's bank space)",
    )
    ap.add_argument(
        "--pipeline",
        action="store_true",
        help="also measure dlib's real pipeline (dlib-bin: HOG, 5-point predictor, get_face_chip), gray-box",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the mode's preset (e.g. smooth=2), for experiments",
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cloakd.core.cloak.presets import PRESETS
    from cloakd.core.extractors import load_extractor
    from cloakd.core.faces import FaceAnalyzer, main_face
    from cloakd.core.protect import ProtectRequest, protect
    from cloakd.core.targets import TargetBank, choose_target

    if args.cloak:
        args.set.append("extractors=" + args.cloak.replace(",", "+"))
    args.mode = preset_variant(":".join([args.mode, *args.set]))
    cloak_names = list(PRESETS[args.mode].extractors)
    held = [n for n in args.held_out.split(",") if n]
    primary = load_extractor("dlib_resnet")

    def build(name: str):
        if name == "dlib_resnet":
            return primary
        if name == "dlib_resnet_robust":
            model = load_extractor("dlib_resnet")
            model.load_state_dict({k: v.float() for k, v in torch.load(args.robust, weights_only=True).items()})
            model.name = name
            return model
        return load_extractor(name)

    extractors = {n: build(n) for n in cloak_names + held}
    analyzer = FaceAnalyzer(extractor=primary, cloak_extractors=[extractors[n] for n in cloak_names])
    measured = FaceAnalyzer(detector=analyzer.detector, extractor=primary, cloak_extractors=list(extractors.values()))
    bank = TargetBank.load()
    people = sorted(p for p in (DATA / "faces").iterdir() if p.is_dir())
    rng = np.random.default_rng(args.seed)
    users = [people[i] for i in sorted(rng.choice(len(people), size=max(1, args.photos // 2), replace=False))]

    rows: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in extractors}
    pipeline = None
    if args.pipeline:
        from trackers import DlibPipeline

        pipeline = DlibPipeline()
        rows["dlib pipeline"] = []
    seconds, held_back, dssims, visibility = [], 0, [], []
    for k, person in enumerate(users):
        photos = sorted(person.glob("*.jpg"))
        refs = np.stack(
            [main_face(analyzer.analyse(np.asarray(Image.open(f).convert("RGB")))).descriptor for f in photos[:6]]
        )
        choice = choose_target(bank, refs, rng=np.random.default_rng([args.seed, k]))
        point = bank.point(choice.name)
        point["dlib_resnet_robust"] = point["dlib_resnet"]
        request = ProtectRequest(
            target=point,
            references=refs,
            mode=args.mode,
            rho=args.rho,
            steps=args.steps,
            verify=args.verify,
            seed=args.seed,
        )
        for f in photos[:2]:
            data = f.read_bytes()
            res = protect(analyzer, data, request, label=str(f))
            seconds.append(res.seconds)
            if not res.ok:
                held_back += 1
                print(f"held {f.name}: {res.reason}", file=sys.stderr)
                continue
            dssims += [r.dssim for r in res.faces if r.role == "user"]
            visibility.append(butteraugli(f, res.data))
            rgb, faces = measured.read(data)
            face = main_face(faces)
            before = measured.describe_face(rgb, face)
            loose_before = measured.describe_face(rgb, _looser(face, primary.geometry))
            views = []
            written, uploaded = np.asarray(Image.open(io.BytesIO(res.data)).convert("RGB")), jpeg75(res.data)
            for img in (written, uploaded):
                found = measured.analyse(img)
                if not found:
                    views.append(None)
                    continue
                near = min(found, key=lambda g: np.linalg.norm((g.box - face.box)))
                views.append(measured.describe_face(img, near))
            if views[-1] is not None:  # another aligner's crop: looser and off-centre, after JPEG 75
                views.append(measured.describe_face(uploaded, _looser(near, primary.geometry)))
            if pipeline is not None:
                seen = [pipeline.descriptor(img) for img in (rgb, written, uploaded)]
                if all(v is not None for v in seen):
                    b, t, unit = seen[0], point["dlib_resnet"], primary.identity_gap
                    rows["dlib pipeline"].append(
                        tuple(
                            x
                            for a in seen[1:]
                            for x in (
                                np.linalg.norm(a - b) / unit,
                                (np.linalg.norm(b - t) - np.linalg.norm(a - t)) / unit,
                            )
                        )
                        + (float("nan"), float("nan"))
                    )
            for name, e in extractors.items():
                if name not in point or any(v is None for v in views):
                    continue
                unit = e.identity_gap
                t = point[name]
                out = []
                for j, v in enumerate(views):
                    b = (loose_before if j == 2 else before)[name]
                    a = v[name]
                    out += [np.linalg.norm(a - b) / unit, (np.linalg.norm(b - t) - np.linalg.norm(a - t)) / unit]
                rows[name].append(tuple(out))
        print(f"{person.name} -> {choice.name}: {statistics.median(seconds):.1f} s per photo so far", file=sys.stderr)

    print(
        f"\ncloak against {', '.join(cloak_names)}; mode {args.mode} {' '.join(args.set)} rho {args.rho or '-'} "
        f"steps {args.steps or '-'}; "
        f"{len(seconds) - held_back} photos, {held_back} held; median DSSIM {statistics.median(dssims):.4f}; "
        f"butteraugli median {statistics.median(visibility):.2f}; "
        f"{statistics.median(seconds):.1f} s per photo; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(
        "| extractor | role | moved | gained | moved after JPEG 75 | gained after JPEG 75 | moved, looser crop "
        "(JPEG 75) | gained, looser crop |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        if not r:
            continue
        med = np.median(np.array(r), axis=0)
        role = "optimised (white-box)" if name in cloak_names else "held out"
        if name == "dlib pipeline":
            role = "gray-box (dlib-bin)"
        print(f"| {name} | {role} | " + " | ".join(f"{v:.2f}" for v in med) + " |")


if __name__ == "__main__":
    main()
