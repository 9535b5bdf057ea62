"""Whose face: how often cloakd singles out the user's face among other people's (issue 6, part 2).

    .venv/bin/python bench/whose_face.py [--users 40] [--refs 4] [--photos 4]

Each of the 40 LFW identities in ../shared/data/faces acts as the user in turn. Enrolment: the user's
first photos go through the same selection as ``cloakd enrol`` (one face per photo, one consistent
person) until ``--refs`` are accepted. Test photos are built from real photos and never include an
enrolment photo:

- "row of k": the user's photo side by side with k-1 photos of other identities (LFW photos sometimes
  show further people at their edges: they count as strangers too);
- "group + user": a real group photo (../shared/data/groups) with the user's photo added beside it,
  scaled so the user's face has the size of the group's faces;
- "group, user absent": the group photo alone: no face may be taken for the user.

A face is "singled out" by :func:`cloakd.core.identity.single_out` (the one closest face within the
extractor's same-person threshold). Prints a markdown table: correct, wrong face, missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import DATA, machine  # noqa: E402


def row(tiles: list[Image.Image]) -> Image.Image:
    h = max(t.height for t in tiles)
    canvas = Image.new("RGB", (sum(t.width for t in tiles), h), (128, 128, 128))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, (h - t.height) // 2))
        x += t.width
    return canvas


def centre_face(faces, box) -> int | None:
    """Index of the detected face whose centre lies in ``box`` (l, t, r, b), nearest its centre."""
    l, t, r, b = box
    c = np.array([(l + r) / 2, (t + b) / 2])
    inside = [
        (np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - c), i)
        for i, f in enumerate(faces)
        if l <= (f.box[0] + f.box[2]) / 2 < r and t <= (f.box[1] + f.box[3]) / 2 < b
    ]
    return min(inside)[1] if inside else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--refs", type=int, default=4)
    ap.add_argument("--photos", type=int, default=4, help="test photos per user and kind")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from cloakd.core.faces import FaceAnalyzer
    from cloakd.core.identity import select_references, single_out

    analyzer = FaceAnalyzer()
    threshold = analyzer.extractor.match_threshold
    t0 = time.perf_counter()
    people = sorted(p for p in (DATA / "faces").iterdir() if p.is_dir())[: args.users]
    everyone = sorted((DATA / "faces").iterdir())
    groups = sorted((DATA / "groups").glob("*.jpg"))
    group_faces = {g: analyzer.analyse(np.asarray(Image.open(g).convert("RGB"))) for g in groups}
    rng = np.random.default_rng(0)
    tally: dict[str, list[int]] = {}  # kind -> [correct, wrong, missed, photos]
    refused = 0

    def count(kind: str, chosen, truth) -> None:
        t = tally.setdefault(kind, [0, 0, 0, 0])
        t[3] += 1
        if chosen is None:
            t[2] += truth is not None
            t[0] += truth is None
        elif chosen == truth:
            t[0] += 1
        else:
            t[1] += 1

    for person in people:
        photos = sorted(person.glob("*.jpg"))
        described = []
        for p in photos:
            faces = analyzer.analyse(np.asarray(Image.open(p).convert("RGB")))
            described.append((p.name, faces[0].descriptor if len(faces) == 1 else None, len(faces)))
        # enrol in order until enough references are accepted (what a user would hand to `cloakd enrol`)
        n = args.refs
        refs = select_references(described[:n], threshold)
        while len(refs.descriptors) < args.refs and n < len(photos) - args.photos:
            n += 1
            refs = select_references(described[:n], threshold)
        refused += len(refs.rejected)
        tests = photos[n:][: args.photos]
        for k, photo in enumerate(tests):
            user_tile = Image.open(photo).convert("RGB")
            size = 2 + k % 3  # rows of 2, 3 and 4 photos
            strangers = [q for q in everyone if q != person]
            others = [
                Image.open(sorted(q.glob("*.jpg"))[rng.integers(12)]).convert("RGB")
                for q in rng.choice(strangers, size - 1, replace=False)
            ]
            pos = int(rng.integers(size))
            tiles = others[:pos] + [user_tile] + others[pos:]
            img = np.asarray(row(tiles))
            faces = analyzer.analyse(img)
            truth = centre_face(faces, (pos * 250, 0, (pos + 1) * 250, 250))
            chosen = single_out(np.stack([f.descriptor for f in faces]), refs.descriptors, threshold) if faces else None
            count("row of 2-4 photos", chosen, truth)
            group = groups[(k + len(tally)) % len(groups)]
            gimg = Image.open(group).convert("RGB")
            gf = group_faces[group]
            side = float(np.median([f.box[2] - f.box[0] for f in gf])) if gf else 60.0
            scale = side / 110.0  # an LFW face box is ~110 px wide in its 250 px photo
            tile = user_tile.resize((max(40, round(250 * scale)),) * 2, Image.BICUBIC)
            img = np.asarray(row([gimg, tile]))
            faces = analyzer.analyse(img)
            top = (img.shape[0] - tile.height) // 2
            truth = centre_face(faces, (gimg.width, top, gimg.width + tile.width, top + tile.height))
            chosen = single_out(np.stack([f.descriptor for f in faces]), refs.descriptors, threshold) if faces else None
            count("group photo + user", chosen, truth)
            gdesc = np.stack([f.descriptor for f in gf])
            count("group photo, user absent", single_out(gdesc, refs.descriptors, threshold), None)

    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s)")
    print(f"date: {time.strftime('%Y-%m-%d')}; command: {' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}")
    print(
        f"{len(people)} users, up to {args.refs} reference photos each ({refused} offered photos not accepted); "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print()
    print("| photos | count | user's face singled out (or, absent: nobody) | another face taken | user missed |")
    print("| --- | --- | --- | --- | --- |")
    for kind, (ok, wrong, missed, total) in tally.items():
        print(f"| {kind} | {total} | {ok / total:.1%} | {wrong / total:.1%} | {missed / total:.1%} |")


if __name__ == "__main__":
    main()
