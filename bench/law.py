"""The law of transfer: does a cloak move a recogniser it never saw more when it is optimised against more,
and more diverse, recognisers?

    .venv/bin/python bench/law.py [--photos 16] [--rho 0.03] [--sizes 1,2,3,4] [--out law.jsonl] [--shard 1/2]
    .venv/bin/python bench/law.py --table law.jsonl          # the table from finished runs

Every non-empty subset S of cloakd's extractors (``--networks``) with |S| in ``--sizes`` cloaks the same
photos at one fixed visibility (DSSIM budget ``--rho``; butteraugli is reported per size to show it is the
same), each network seeing the same views (the exact view and one random upload view per step), so that
only the ensemble differs. Each cloaked photo is written as JPEG 95, recompressed at JPEG 75 (an upload),
its face re-detected and described by every network: a network outside S is *held out* (transfer), one in
S is white-box. The measure is bench/shift.py's: the gain towards the user's target class, in the
network's identity gaps (how much closer the face came to the target identity's centroid), and how far
it moved from its own features. The photos and targets are shift.py's (the first 2 photos of 8 users of
../shared/data/faces, each user's target class chosen by eq. 3 from its first 6 photos in dlib's space).

The table: for each held-out network, its median gain when the cloak saw 1, 2, 3, 4 other networks (mean
over the subsets of that size), and the increase per added network (least-squares slope over sizes).
Rows go to ``--out`` as they are made (JSON lines), so a long run can be resumed or split (``--shard``)
over processes and the table made from the union.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import DATA, butteraugli, machine  # noqa: E402

NETWORKS = ("dlib_resnet", "sface", "omz_reid", "facenet", "arcface_mbf")


def _jpeg(rgb: np.ndarray, quality: int, full_chroma: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=0 if full_chroma else 2)
    return buf.getvalue()


def _subsets(networks: list[str], sizes: list[int]) -> list[tuple[str, ...]]:
    return [s for n in sizes for s in itertools.combinations(networks, n)]


class Photo:
    """One user photo, analysed once: its main face, that face's descriptor by every network, the target."""

    def __init__(self, path: Path, analyzer, target: dict[str, np.ndarray], user: str):
        from cloakd.core.faces import main_face

        self.path, self.user, self.target = path, user, target
        self.rgb, faces = analyzer.read(path.read_bytes(), str(path))
        self.face = main_face(faces)
        self.own = analyzer.describe_face(self.rgb, self.face)


def _photos(analyzer, count: int, seed: int) -> list[Photo]:
    from cloakd.core.faces import main_face
    from cloakd.core.targets import TargetBank, choose_target

    bank = TargetBank.load()
    missing = [e.name for e in analyzer.cloak_extractors if e.name != bank.extractor and e.name not in bank.spaces]
    if missing:
        sys.exit(f"the target bank has no descriptors by {', '.join(missing)}: calibrate them first")
    people = sorted(p for p in (DATA / "faces").iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    users = [people[i] for i in sorted(rng.choice(len(people), size=max(1, count // 2), replace=False))]
    out = []
    for k, person in enumerate(users):
        files = sorted(person.glob("*.jpg"))
        refs = np.stack([main_face(analyzer.read(f.read_bytes(), str(f))[1]).descriptor for f in files[:6]])
        choice = choose_target(bank, refs, rng=np.random.default_rng([seed, k]))
        out += [Photo(f, analyzer, bank.point(choice.name), person.name) for f in files[:2]]
    return out[:count]


def _cloak_one(photo: Photo, subset: tuple[str, ...], analyzer, by_name, preset, seed: int, pipeline=None) -> dict:
    """Cloak ``photo`` against ``subset``, upload it, and measure every network (and dlib's real pipeline:
    another detector and landmark model in front of dlib's ResNet)."""
    from cloakd.core.cloak.optimise import FaceTask, Goal, cloak

    nets = [by_name[n] for n in subset]
    goals = [
        Goal(
            analyzer.transform(photo.face, e),
            photo.own[e.name],
            photo.target[e.name],
            analyzer.alternate_alignments(photo.rgb, photo.face, e),
        )
        for e in nets
    ]
    t0 = time.perf_counter()
    result = cloak(photo.rgb, [FaceTask(goals)], nets, preset, seed=seed)
    seconds = time.perf_counter() - t0
    written = _jpeg(result.image, 95, full_chroma=True)
    uploaded = np.asarray(Image.open(io.BytesIO(_jpeg(np.asarray(Image.open(io.BytesIO(written))), 75))))
    found = analyzer.find(uploaded)
    row = {
        "photo": str(photo.path.relative_to(DATA)),
        "subset": list(subset),
        "seconds": round(seconds, 2),
        "dssim": round(result.faces[0].dssim, 5),
        "butteraugli": butteraugli(photo.path, written),
    }
    if not found:
        row["lost"] = True
        return row
    near = min(found, key=lambda g: np.linalg.norm(g.box - photo.face.box))
    if pipeline is not None and photo.pipeline is not None and (seen := pipeline.descriptor(uploaded)) is not None:
        t, before, unit = photo.target[analyzer.extractor.name], photo.pipeline, analyzer.extractor.identity_gap
        row["dlib_pipeline"] = {
            "moved": round(float(np.linalg.norm(seen - before) / unit), 4),
            "gained": round(float((np.linalg.norm(before - t) - np.linalg.norm(seen - t)) / unit), 4),
        }
    for e in analyzer.cloak_extractors:
        after = analyzer.describe(uploaded, [near], e)[0]
        t, before, unit = photo.target[e.name], photo.own[e.name], e.identity_gap
        row[e.name] = {
            "moved": round(float(np.linalg.norm(after - before) / unit), 4),
            "gained": round(float((np.linalg.norm(before - t) - np.linalg.norm(after - t)) / unit), 4),
        }
    return row


def _skip_gradient(extractor, gamma: float) -> None:
    """Experiment (the Skip Gradient Method, Wu et al., ICLR 2020): the gradient through every residual
    branch of dlib's ResNet scaled by ``gamma`` in the backward pass; the forward pass is unchanged."""
    import torch

    from cloakd.core.extractors.dlib_resnet import Residual, ResidualDown

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad * gamma

    for m in extractor.modules():
        if isinstance(m, (Residual, ResidualDown)):
            m.block.register_forward_hook(lambda mod, inp, out: Scale.apply(out))


def _smooth_gradient(sigma: float) -> None:
    """Experiment (translation-invariant attacks, Dong et al., CVPR 2019): each perturbation's gradient
    blurred by a Gaussian of ``sigma`` working-resolution pixels before Adam's step."""
    import torch
    import torch.nn.functional as F

    from cloakd.core.cloak import optimise

    radius = max(1, round(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k1 = torch.exp(-(x**2) / (2 * sigma**2))
    k2 = torch.outer(k1, k1)
    kernel = (k2 / k2.sum()).expand(3, 1, -1, -1).contiguous()
    step = optimise._Adam.step

    def smoothed(self, lr: float) -> None:
        with torch.no_grad():
            for p in self.params:
                g = F.pad(p.grad[None], (radius,) * 4, mode="reflect")
                p.grad.copy_(F.conv2d(g, kernel, groups=3)[0])
        step(self, lr)

    optimise._Adam.step = smoothed


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from cloakd.core.cloak.presets import CloakPreset
    from cloakd.core.extractors import load_extractor
    from cloakd.core.faces import FaceAnalyzer

    networks = args.networks.split(",")
    primary = load_extractor("dlib_resnet")
    extractors = [primary] + [load_extractor(n) for n in networks if n != "dlib_resnet"]
    analyzer = FaceAnalyzer(extractor=primary, cloak_extractors=extractors).load_cloak_models()
    by_name = {e.name: e for e in extractors}
    if args.skip_gradient != 1.0:
        _skip_gradient(primary, args.skip_gradient)
    if args.smooth_gradient:
        _smooth_gradient(args.smooth_gradient)
    # every network sees the same two views per step: the exact one and one random upload view
    preset = CloakPreset(
        "law",
        rho=args.rho,
        steps=args.steps,
        lr=1.5,
        views_per_step=2,
        away_weight=1.0,
        away_margin=1.5,
        exact_alternate=False,
    )
    photos = _photos(analyzer, args.photos, args.seed)
    pipeline = None
    if args.pipeline:
        from trackers import DlibPipeline

        pipeline = DlibPipeline()
    for photo in photos:
        photo.pipeline = None if pipeline is None else pipeline.descriptor(photo.rgb)
    done = set()
    if args.out.exists():
        done = {(r["photo"], tuple(r["subset"])) for r in map(json.loads, args.out.read_text().splitlines())}
    index, count = (int(v) for v in args.shard.split("/"))
    jobs = [(s, p) for j, s in enumerate(_subsets(networks, args.sizes)) if j % count == index - 1 for p in photos]
    for n, (subset, photo) in enumerate(jobs):
        key = (str(photo.path.relative_to(DATA)), subset)
        if key in done:
            continue
        row = _cloak_one(photo, subset, analyzer, by_name, preset, args.seed, pipeline)
        row.update(
            rho=args.rho, steps=args.steps, skip_gradient=args.skip_gradient, smooth_gradient=args.smooth_gradient
        )
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{n + 1}/{len(jobs)} {'+'.join(subset)} {photo.path.name}: {row['seconds']} s", file=sys.stderr)


def table(rows: list[dict], networks: list[str]) -> str:
    """Held-out gain (after JPEG 75, median over photos, mean over subsets) by ensemble size."""
    rows = [r for r in rows if not r.get("lost")]
    sizes = sorted({len(r["subset"]) for r in rows})
    lines = [
        "| held-out network | "
        + " | ".join(f"{n} network{'s' * (n > 1)}" for n in sizes)
        + " | per added network | white-box (in the ensemble) |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: | ---: |",
    ]
    slopes = []
    measured = networks + (["dlib_pipeline"] if any("dlib_pipeline" in r for r in rows) else [])
    for h in measured:
        inside = "dlib_resnet" if h == "dlib_pipeline" else h  # the pipeline's ResNet is dlib_resnet
        by_size = []
        for n in sizes:
            subsets = {
                tuple(r["subset"]) for r in rows if len(r["subset"]) == n and inside not in r["subset"] and h in r
            }
            medians = [statistics.median(r[h]["gained"] for r in rows if tuple(r["subset"]) == s) for s in subsets]
            by_size.append(statistics.mean(medians) if medians else float("nan"))
        known = [(n, g) for n, g in zip(sizes, by_size) if g == g]
        slope = float(np.polyfit(*zip(*known), 1)[0]) if len(known) >= 2 else float("nan")
        slopes.append(slope)
        white = [r[h]["gained"] for r in rows if inside in r["subset"] and h in r]
        lines.append(
            f"| {h} | "
            + " | ".join("-" if g != g else f"{g:.2f}" for g in by_size)
            + f" | {slope:+.3f} | {statistics.median(white) if white else float('nan'):.2f} |"
        )
    visible = [
        " / ".join(f"{statistics.median(r['butteraugli'] for r in rows if len(r['subset']) == n):.2f}" for n in sizes)
    ]
    lines.append(
        f"\nMean increase per added network (over cloakd's networks): {np.nanmean(slopes[: len(networks)]):+.3f} gaps. "
        f"Butteraugli median by size ({', '.join(map(str, sizes))}): {visible[0]}; "
        f"{len({r['photo'] for r in rows})} photos, {len({tuple(r['subset']) for r in rows})} ensembles."
    )
    return "\n".join(lines)


def matrix(rows: list[dict], networks: list[str]) -> str:
    """Transfer between single networks: the gain of each network (column) when the cloak saw only one
    (row); the diagonal is white-box. Similar networks transfer to each other more."""
    rows = [r for r in rows if not r.get("lost") and len(r["subset"]) == 1]
    measured = networks + (["dlib_pipeline"] if any("dlib_pipeline" in r for r in rows) else [])
    lines = [
        "| cloak against \\ measured by | " + " | ".join(measured) + " |",
        "| --- | " + " | ".join("---:" for _ in measured) + " |",
    ]
    for s in networks:
        mine = [r for r in rows if r["subset"] == [s]]
        cells = [
            f"{statistics.median(r[h]['gained'] for r in mine):.2f}" if mine and all(h in r for r in mine) else "-"
            for h in measured
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default=",".join(NETWORKS), help="the networks, dlib_resnet among them")
    ap.add_argument("--sizes", default="1,2,3,4", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--rho", type=float, default=0.03, help="the DSSIM budget (fixed visibility)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-gradient", type=float, default=1.0, help="experiment: dlib's residual gradient x G")
    ap.add_argument("--smooth-gradient", type=float, default=0.0, help="experiment: the gradient blurred, sigma")
    ap.add_argument("--pipeline", action="store_true", help="also measure dlib's real pipeline (dlib-bin)")
    ap.add_argument("--shard", default="1/1", help="I/N: run every N-th ensemble, starting at the I-th")
    ap.add_argument("--out", type=Path, default=Path("law.jsonl"))
    ap.add_argument("--table", type=Path, metavar="JSONL", help="print the table of finished runs and exit")
    args = ap.parse_args()
    if args.table:
        rows = [json.loads(line) for line in args.table.read_text().splitlines()]
        print(f"Machine: {machine()}; {time.strftime('%Y-%m-%d')}; rho {rows[0]['rho']}, {rows[0]['steps']} steps\n")
        print(table(rows, args.networks.split(",")))
        print("\nOne network at a time (median gain after JPEG 75, in the measuring network's gaps):\n")
        print(matrix(rows, args.networks.split(",")))
        return
    run(args)


if __name__ == "__main__":
    main()
