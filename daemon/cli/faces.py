"""``cloakd faces PHOTO...``: show what cloakd sees in a photo (boxes, scores, landmarks, descriptors)."""

from __future__ import annotations

import json
from pathlib import Path

from cloakd.core.errors import CloakdError

from .exits import Exit, fail
from .models import load_analyzer
from .options import add_command


def register(sub) -> None:
    p = add_command(
        sub,
        "faces",
        summary="show the faces cloakd finds in photos",
        description="Find the faces in each photo and show, per face, its box, how sure the detector "
        "is, and five landmarks (eyes, nose, mouth corners). With --json, also the "
        "128-number descriptor that face recognition compares.",
        example="cloakd faces group.jpg",
    )
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photos to look at")
    p.add_argument("--json", action="store_true", help="print JSON lines, with each face's descriptor")
    p.set_defaults(func=run)


def run(args) -> int:
    analyzer = load_analyzer()
    failed = 0
    for path in args.photos:
        try:
            file = Path(path)
            rgb, faces = analyzer.read(file.read_bytes(), str(file))
        except (CloakdError, OSError) as e:  # OSError: missing, unreadable or a folder
            fail(path, e)
            failed += 1
            continue
        h, w = rgb.shape[:2]
        if args.json:
            print(
                json.dumps({"photo": path, "size": [w, h], "faces": [f.as_dict(with_descriptor=True) for f in faces]})
            )
            continue
        print(f"{path}: {w}x{h}, {len(faces)} face{'s' if len(faces) != 1 else ''}")
        for i, f in enumerate(faces, 1):
            x1, y1, x2, y2 = f.box
            marks = " ".join(f"({x:.0f},{y:.0f})" for x, y in f.landmarks)
            print(f"  face {i}: box ({x1:.0f},{y1:.0f})-({x2:.0f},{y2:.0f}) score {f.score:.3f} landmarks {marks}")
    return Exit.FAILED if failed else Exit.OK
