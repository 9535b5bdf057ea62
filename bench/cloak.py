"""Cloak benchmark: seconds per face, per 12 MP single-face photo end to end, faces per minute at batch 8,
peak RSS on a 24 MP photo. Prints a markdown table.

    .venv/bin/python bench/cloak.py [--threads 1] [--mode mid]

Test photos are made at run time from ../shared/data (nothing is shipped): an LFW photo as is (one
250 px face), the same photo enlarged into a 4000 x 3000 (12 MP) or 5656 x 4242 (24 MP) frame with a
real photo's background, and a group photo with 8 faces (dlib_2007_007763.jpg's 7 plus one pasted).
"End to end" is cloakd's protect(): decode, detect, describe, cloak, encode, strip, verify.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from PIL import Image  # noqa: E402

from common import DATA, machine  # noqa: E402


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def portrait(size: tuple[int, int]) -> bytes:
    """An LFW face enlarged to ~1/3 of the frame height... pasted on a real background."""
    bg = Image.open(DATA / "metadata" / "iphone_hdr_YES.jpg").convert("RGB").resize(size, Image.BICUBIC)
    face = Image.open(DATA / "faces" / "Bill_Gates" / "Bill_Gates_0003.jpg").convert("RGB")
    side = int(size[1] * 0.8)
    bg.paste(face.resize((side, side), Image.BICUBIC), ((size[0] - side) // 2, (size[1] - side) // 2))
    return jpeg(bg)


def group8() -> bytes:
    img = Image.open(DATA / "groups" / "dlib_2007_007763.jpg").convert("RGB")
    face = Image.open(DATA / "faces" / "Bill_Gates" / "Bill_Gates_0003.jpg").convert("RGB").resize((90, 90))
    img.paste(face, (10, 10))
    return jpeg(img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", default="mid")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from cloakd.core.faces import FaceAnalyzer
    from cloakd.core.protect import ProtectRequest, protect
    from cloakd.core.targets import TargetBank

    analyzer = FaceAnalyzer()
    bank = TargetBank.load()
    request = ProtectRequest(target=bank.point(bank.names[0]), mode=args.mode)

    def timed(data: bytes, repeats: int) -> tuple[float, float, int, bool]:
        times, faces, ok = [], 0, True
        for _ in range(repeats):
            t = time.perf_counter()
            res = protect(analyzer, data, request)
            times.append(time.perf_counter() - t)
            faces, ok = len(res.faces), ok and res.ok
        return min(times), statistics.median(times), faces, ok

    rows = []
    lfw = (DATA / "faces" / "Bill_Gates" / "Bill_Gates_0003.jpg").read_bytes()
    mn, md, n, ok = timed(lfw, args.repeats)
    rows.append(("LFW photo 250x250, 1 face (s per face)", mn, md, n, ok))
    p12 = portrait((4000, 3000))
    mn, md, n, ok = timed(p12, args.repeats)
    rows.append(("12 MP photo 4000x3000, 1 face, end to end (s)", mn, md, n, ok))
    g8 = group8()
    mn, md, n, ok = timed(g8, max(1, args.repeats - 1))
    rows.append((f"group photo, {n} faces in one batch (s; faces/min = {60 * n / md:.1f})", mn, md, n, ok))
    p24 = portrait((5656, 4242))
    mn, md, n, ok = timed(p24, 1)
    rows.append(("24 MP photo 5656x4242, 1 face, end to end (s)", mn, md, n, ok))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s), mode {args.mode}")
    print(f"date: {time.strftime('%Y-%m-%d')}; command: {' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}")
    print()
    print("| case | min | median | faces | verified |")
    print("| --- | --- | --- | --- | --- |")
    for name, mn, md, n, ok in rows:
        print(f"| {name} | {mn:.2f} | {md:.2f} | {n} | {'yes' if ok else 'NO'} |")
    print(f"| peak RSS of the whole run (incl. the 24 MP photo) | {rss:.0f} MB | | | |")


if __name__ == "__main__":
    main()
