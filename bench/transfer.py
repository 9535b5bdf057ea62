"""Transfer benchmark: does a cloak protect against face recognisers it was never optimised against?

    .venv/bin/python bench/transfer.py [--users 10] [--modes mid,high] [--human /tmp/human] [--sybil]

The Fawkes paper's protocol (section 5) on ../shared/data/faces (40 identities x 12 photos). Each user in
turn: its first 6 photos are cloaked through cloakd's ``protect()`` (enrolled with those photos: its target
class chosen by eq. 3, its face singled out by its references) and go to the tracker as the user's
training photos; its last 6 photos, clean, are the test. The other 39 identities train the tracker with
their first 6 clean photos; their last 6 measure normal accuracy. PSR = share of the user's clean test
photos the tracker does not recognise as the user, averaged over users.

Trackers (bench/trackers.py): dlib's real pipeline (gray-box: HOG + 5-point + get_face_chip + the ResNet
cloakd optimises against, through another alignment) and the three black-box models of
../shared/trackers/human. Each embeds every photo; three classifiers are trained on the embeddings:
logistic regression, nearest centroid and 1-NN. The cloaked files are judged as written and after an
upload platform's processing (long side 1080, JPEG 75).

Visibility is measured independently of what the cloak optimises (DSSIM): butteraugli distance between
each original and its cloaked file (median and 90th percentile), beside the original re-encoded at JPEG 95
as a floor. ``--sybil`` adds the leaked-photo table (r = 0.2: one of the 6 training photos uncloaked),
without and with 6 Sybil images per user made from ../shared/data/targets.

Work files (cloaked photos, embeddings) go to --work (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cloakd.core.evaluate import upload_processing  # noqa: E402
from common import DATA, butteraugli, machine, preset_variant  # noqa: E402
from trackers import BLACK_BOX, DlibPipeline, HumanTrackers, OwnExtractors  # noqa: E402

TRAIN = 6  # photos of each identity that train the tracker (the user's are cloaked); the rest test it
CLASSIFIERS = ("linear", "centroid", "1nn")
VARIANTS = {"written": "as written", "uploaded": "after JPEG 75 + 1080 px"}
NO_CLOAK = "none"  # a pseudo-mode: the user's photos published uncloaked (what each tracker does unprotected)


class Trackers:
    """Every tracker's embedding of a file, computed once per file version and kept in ``cache`` (an .npz
    keyed by path, size and mtime, so re-runs skip the 480 clean photos and a rewritten file is embedded
    again)."""

    def __init__(self, human: Path | None, cache: Path | None, own: OwnExtractors | None = None):
        self.dlib = DlibPipeline()
        self.human = HumanTrackers(human) if human is not None else None
        self.own = own
        self.names = ["dlib"] + (list(BLACK_BOX) if human is not None else []) + (own.names if own else [])
        self.path = cache
        self.cache: dict[str, np.ndarray | None] = {}
        if cache is not None and cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                self.cache = {k: (None if z[k].size == 0 else z[k]) for k in z.files}

    @staticmethod
    def _key(tracker: str, f: Path) -> str:
        st = f.stat()
        return f"{tracker}|{f}|{st.st_size}|{st.st_mtime_ns}"

    def embed(self, files: list[Path]) -> None:
        todo = [f for f in files if any(self._key(t, f) not in self.cache for t in self.names)]
        if not todo:
            return
        for f, e in self.dlib.embed(todo).items():
            self.cache[self._key("dlib", Path(f))] = e
        for source in (self.human, self.own):
            if source is None:
                continue
            for model, rows in source.embed(todo).items():
                for f, e in rows.items():
                    self.cache[self._key(model, Path(f))] = e
        if self.path is not None:
            np.savez(self.path, **{k: (np.zeros(0) if v is None else v) for k, v in self.cache.items()})

    def get(self, tracker: str, f: Path) -> np.ndarray | None:
        return self.cache[self._key(tracker, f)]


def psr_for_user(
    trackers: Trackers,
    tracker: str,
    classifier: str,
    user: str,
    user_train: list[Path],
    clean: dict[str, list[Path]],
    sybil: list[Path] = (),
) -> tuple[float, float] | None:
    """(PSR, normal accuracy) of one classifier of one tracker trained with ``user_train`` as the user."""
    from cloakd.core.evaluate import score_tracker

    x, y = [], []
    for name, files in clean.items():
        if name == user:
            continue
        for f in files[:TRAIN]:
            if (e := trackers.get(tracker, f)) is not None:
                x.append(e), y.append(name)
    mine = [e for f in user_train if (e := trackers.get(tracker, f)) is not None]
    if not mine:
        return None  # the tracker found no face in any of the user's training photos
    x += mine
    y += [user] * len(mine)
    syb = [e for f in sybil if (e := trackers.get(tracker, f)) is not None]
    x += syb
    y += [f"{user} (Sybil)"] * len(syb)
    test = [e for f in clean[user][TRAIN:] if (e := trackers.get(tracker, f)) is not None]
    others = [
        (e, n)
        for n, fs in clean.items()
        if n != user
        for f in fs[TRAIN:]
        if (e := trackers.get(tracker, f)) is not None
    ]
    s = score_tracker(
        classifier,
        np.stack(x),
        np.array(y),
        user,
        np.stack(test),
        np.stack([e for e, _ in others]),
        np.array([n for _, n in others]),
    )
    return s.psr, s.normal_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument(
        "--modes",
        default="none,mid",
        help=f"cloak modes to compare ({NO_CLOAK!r}: uncloaked; "
        "MODE:FIELD=VALUE:... changes preset fields for an experiment)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--human",
        type=Path,
        default=Path(os.environ.get("CLOAKD_HUMAN", "/tmp/human")),
        help="installed copy of ../shared/trackers/human (default %(default)s)",
    )
    ap.add_argument("--no-human", action="store_true", help="gray-box tracker only")
    ap.add_argument(
        "--white-box",
        action="store_true",
        help="also cloakd's own extractors as trackers, labelled cloakd:NAME (white-box where the "
        "mode optimises against them: the best case)",
    )
    ap.add_argument("--sybil", action="store_true", help="leaked-photo and Sybil table (first mode only)")
    ap.add_argument("--work", type=Path, help="keep work files here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "cloakd-transfer-embeddings.npz",
        help="trackers' embeddings kept between runs (default %(default)s)",
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cloakd.core.faces import FaceAnalyzer

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="cloakd-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    clean = {p.name: sorted(p.glob("*.jpg")) for p in sorted((DATA / "faces").iterdir()) if p.is_dir()}
    rng = np.random.default_rng(args.seed)
    users = sorted(rng.choice(sorted(clean), size=min(args.users, len(clean)), replace=False).tolist())
    modes = [m if m == NO_CLOAK else preset_variant(m) for m in args.modes.split(",") if m]
    analyzer = FaceAnalyzer()
    trackers = Trackers(
        None if args.no_human else args.human, args.cache, OwnExtractors(analyzer) if args.white_box else None
    )
    log(f"users: {', '.join(users)}; embedding {sum(map(len, clean.values()))} clean photos")
    trackers.embed([f for fs in clean.values() for f in fs])

    results = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "users": users,
        "command": " ".join(["bench/transfer.py"] + sys.argv[1:]),
        "modes": {},
    }
    floor = []
    for user in users:
        for f in clean[user][:TRAIN]:
            q95 = work / "q95" / user / f.name
            q95.parent.mkdir(parents=True, exist_ok=True)
            Image.open(f).save(q95, quality=95)
            floor.append(butteraugli(f, q95))
    results["floor"] = {"median": statistics.median(floor), "p90": float(np.percentile(floor, 90))}

    for mode in modes:
        cloaked, held, seconds, dssims = _cloak(analyzer, users, clean, mode, work, args.seed, log)
        files = {
            v: [
                work / mode / v / u / f.name
                for u in users
                for f, c in zip(clean[u][:TRAIN], cloaked[u])
                if c is not None
            ]
            for v in VARIANTS
        }
        trackers.embed(files["written"] + files["uploaded"])
        vis = [
            butteraugli(f, work / mode / "written" / u / f.name)
            for u in users
            for f, c in zip(clean[u][:TRAIN], cloaked[u])
            if c is not None
        ]
        table = {}
        for tracker in trackers.names:
            for v in VARIANTS:
                for c in CLASSIFIERS:
                    scores = [
                        psr_for_user(
                            trackers,
                            tracker,
                            c,
                            u,
                            [
                                work / mode / v / u / f.name
                                for f, x in zip(clean[u][:TRAIN], cloaked[u])
                                if x is not None
                            ],
                            clean,
                        )
                        for u in users
                    ]
                    scores = [s for s in scores if s is not None]
                    table[f"{tracker}|{v}|{c}"] = {
                        "psr": float(np.mean([s[0] for s in scores])),
                        "per_user": [float(s[0]) for s in scores],
                        "worst": float(min(s[0] for s in scores)),
                        "normal": float(np.mean([s[1] for s in scores])),
                        "users": len(scores),
                    }
        results["modes"][mode] = {
            "psr": table,
            "held": held,
            "protected": sum(c is not None for u in users for c in cloaked[u]),
            "seconds_median": statistics.median(seconds),
            "dssim_median": statistics.median(dssims),
            "butteraugli": {"median": statistics.median(vis), "p90": float(np.percentile(vis, 90))},
        }
        _print_mode(mode, results["modes"][mode], trackers.names)
    if args.sybil and modes:
        results["sybil"] = _sybil_table(analyzer, trackers, users, clean, modes[0], work, args.seed, log)
    results["seconds"] = round(time.perf_counter() - t0)
    _print_summary(results, trackers.names)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _cloak(analyzer, users, clean, mode, work, seed, log):
    """Protect every user's training photos once; returns ({user: [True|None per photo]}, held, seconds,
    DSSIMs). Written files go to work/MODE/written/USER/, their uploaded copies to work/MODE/uploaded/USER/."""
    from cloakd.core.protect import ProtectRequest, protect
    from cloakd.core.targets import TargetBank, choose_target

    bank = TargetBank.load()
    cloaked, held, seconds, dssims = {}, 0, [], []
    for k, user in enumerate(users):
        refs = _references(analyzer, clean[user][:TRAIN])[analyzer.extractor.name]
        target = choose_target(bank, refs, rng=np.random.default_rng([seed, k]))
        request = ProtectRequest(target=bank.point(target.name), references=refs, mode=mode, seed=seed)
        cloaked[user] = []
        for f in clean[user][:TRAIN]:
            if mode == NO_CLOAK:
                _write(work, mode, user, f.name, f.read_bytes())
                cloaked[user].append(True)
                seconds.append(0.0)
                continue
            res = protect(analyzer, f.read_bytes(), request, label=str(f))
            seconds.append(res.seconds)
            if not res.ok:
                held += 1
                log(f"  held {user}/{f.name}: {res.reason}")
                cloaked[user].append(None)
                continue
            dssims += [fr.dssim for fr in res.faces if fr.role == "user"]
            _write(work, mode, user, f.name, res.data)
            cloaked[user].append(True)
        log(
            f"{mode}: {user} -> target {target.name}: {sum(c is not None for c in cloaked[user])}/{TRAIN} "
            f"protected, {statistics.median(seconds):.1f} s per photo (median so far)"
        )
    return cloaked, held, seconds, dssims or [0.0]


def _references(analyzer, files: list[Path]) -> dict[str, np.ndarray]:
    """The user's enrolment: the main face of each photo, described by every extractor of the cloak."""
    from cloakd.core.faces import main_face

    rows = []
    for f in files:
        rgb, faces = analyzer.read(f.read_bytes(), str(f))
        rows.append(analyzer.describe_face(rgb, main_face(faces)))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _write(work: Path, mode: str, user: str, name: str, data: bytes) -> None:
    """A published file as written, and as an upload platform would serve it."""
    for variant, content in (("written", data), ("uploaded", upload_processing(data))):
        out = work / mode / variant / user / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(content)


def _sybil_table(analyzer, trackers, users, clean, mode, work, seed, log) -> dict:
    """PSR with r = 0.2 of the user's training photos leaked uncloaked, without and with Sybil images."""
    from cloakd.core.sybil import Candidate, describe_candidates, make_sybil, sybil_target

    files = sorted((DATA / "targets").glob("*/*.jpg"))
    pick = np.random.default_rng(seed).choice(len(files), size=min(400, len(files)), replace=False)
    pool = describe_candidates(analyzer, [Candidate(str(files[i]), files[i].read_bytes()) for i in sorted(pick)])
    leaked_n = round(0.2 * TRAIN)
    out: dict[str, dict] = {}
    used: set[str] = set()
    per_user: dict[str, tuple[list[Path], list[Path]]] = {}
    for user in users:
        spaces = _references(analyzer, clean[user][:TRAIN])
        refs = spaces[analyzer.extractor.name]
        sybils = []
        for k in range(TRAIN):
            free = [c for c in pool if c.label not in used]
            res = make_sybil(analyzer, free, sybil_target(spaces), references=refs, mode=mode, seed=seed + k)
            if not res.ok:
                log(f"  no Sybil image {k + 1} for {user}: {res.reason}")
                continue
            used.add(res.label)
            path = work / mode / "sybil" / user / f"sybil-{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(res.data)
            sybils.append(path)
        leaked = list(clean[user][:leaked_n])
        rest = [work / mode / "written" / user / f.name for f in clean[user][leaked_n:TRAIN]]
        per_user[user] = (leaked + [f for f in rest if f.exists()], sybils)
        log(f"sybil: {user}: {len(sybils)} images")
    trackers.embed([f for a, b in per_user.values() for f in a + b])
    for tracker in trackers.names:
        for c in CLASSIFIERS:
            for with_sybil in (False, True):
                s = [
                    psr_for_user(trackers, tracker, c, u, per_user[u][0], clean, per_user[u][1] if with_sybil else [])
                    for u in users
                ]
                s = [x[0] for x in s if x is not None]
                out[f"{tracker}|{c}|{'sybil' if with_sybil else 'none'}"] = float(np.mean(s))
    _print_sybil(out, trackers.names)
    return out


def _print_mode(mode: str, r: dict, names: list[str]) -> None:
    print(
        f"\nmode {mode}: {r['protected']} photos protected, {r['held']} held; median DSSIM "
        f"{r['dssim_median']:.4f}; butteraugli median {r['butteraugli']['median']:.2f}, p90 "
        f"{r['butteraugli']['p90']:.2f}; {r['seconds_median']:.1f} s per photo (median)"
    )
    print("| tracker | files | PSR logistic | PSR centroid | PSR 1-NN | worst user (logistic) | normal accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for t in names:
        for v, label in VARIANTS.items():
            row = [r["psr"][f"{t}|{v}|{c}"] for c in CLASSIFIERS]
            print(
                f"| {t} | {label} | "
                + " | ".join(f"{x['psr']:.2f}" for x in row)
                + f" | {row[0]['worst']:.2f} | {row[0]['normal']:.3f} |"
            )
    sys.stdout.flush()


def _print_summary(results: dict, names: list[str]) -> None:
    print(f"\n{results['machine']}; {results['date']}; `{results['command']}`; {results['seconds']} s")
    print(f"users: {', '.join(results['users'])}")
    print(
        "\nPSR after JPEG 75 + 1080 px (mean of logistic regression and centroid; in brackets the worst user's) "
        "against butteraugli; * white-box (the mode optimises against that extractor):"
    )
    print("| mode | " + " | ".join(names) + " | butteraugli median | p90 | s per photo |")
    print("| --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- |")
    f = results["floor"]
    print(
        "| JPEG 95 re-encode (floor) | "
        + " | ".join("-" for _ in names)
        + f" | {f['median']:.2f} | {f['p90']:.2f} | - |"
    )
    from cloakd.core.cloak.presets import PRESETS

    for mode, r in results["modes"].items():
        used = PRESETS[mode].extractors if mode in PRESETS else ()
        cells = []
        for t in names:
            pair = [r["psr"][f"{t}|uploaded|{c}"] for c in ("linear", "centroid")]
            worst = min(np.mean(u) for u in zip(*(p["per_user"] for p in pair)))
            star = "*" if t.startswith("cloakd:") and t.split(":", 1)[1] in used else ""
            cells.append(f"{np.mean([p['psr'] for p in pair]):.2f}{star} ({worst:.2f})")
        print(
            f"| {mode} | "
            + " | ".join(cells)
            + f" | {r['butteraugli']['median']:.2f} | {r['butteraugli']['p90']:.2f} | {r['seconds_median']:.1f} |"
        )


def _print_sybil(out: dict, names: list[str]) -> None:
    print("\nLeaked photos (r = 0.2: 1 of 6 training photos uncloaked), files as written:")
    print("| tracker | classifier | PSR | PSR + Sybil |\n| --- | --- | --- | --- |")
    for t in names:
        for c in CLASSIFIERS:
            print(f"| {t} | {c} | {out[f'{t}|{c}|none']:.2f} | {out[f'{t}|{c}|sybil']:.2f} |")


if __name__ == "__main__":
    main()
