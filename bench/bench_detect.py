"""Time FaceDetector.detect on real photos, large and small, with 1 and 2 torch threads.

The large cases are built from the shared test photos (none of them is a 12-megapixel photo with a face):
an LFW image stretched to 4000x3000 (blurry, one huge face), an 8-megapixel street photo upscaled to
4000x3000 with an LFW face pasted in at 1000 px, the 9-megapixel Nokia photo (no face) and the six-person
group photo upscaled to 4000x2100. Prints a markdown table (min and median of the repeats, in ms).

Usage: .venv/bin/python bench/bench_detect.py [--repeats N] [--max-side PX]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cloakd.core.detect import FaceDetector
from common import DATA  # noqa: E402


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def cases() -> dict[str, np.ndarray]:
    face = _rgb(DATA / "faces" / "Bill_Gates" / "Bill_Gates_0001.jpg")
    street = _rgb(DATA / "metadata" / "iphone_hdr_YES.jpg").resize((4000, 3000), Image.BICUBIC)
    street.paste(face.resize((1000, 1000), Image.BICUBIC), (1500, 1000))
    group = _rgb(DATA / "groups" / "facenet-pytorch_multiface.jpg")
    return {
        "LFW face stretched to 4000x3000": np.asarray(face.resize((4000, 3000), Image.BICUBIC)),
        "street 4000x3000 + 1000 px face": np.asarray(street),
        "Nokia 4608x1976, no face": np.asarray(_rgb(DATA / "metadata" / "HMD_Nokia_8.3_5G.jpg")),
        "group of 6, 4000x2100": np.asarray(group.resize((4000, 2100), Image.BICUBIC)),
        "dlib group of 7, 500x375": np.asarray(_rgb(DATA / "groups" / "dlib_2007_007763.jpg")),
    }


def lfw_images() -> list[np.ndarray]:
    return [np.asarray(_rgb(p)) for p in sorted((DATA / "faces").glob("*/*.jpg"))]


def time_ms(detector: FaceDetector, image: np.ndarray, repeats: int) -> tuple[float, float, int]:
    found = len(detector.detect(image))  # warm-up: oneDNN builds its kernels on first use of a shape
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.detect(image)
        runs.append((time.perf_counter() - t0) * 1000)
    return min(runs), statistics.median(runs), found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-side", type=int, default=None, help="override FaceDetector's default")
    args = parser.parse_args()
    detector = FaceDetector() if args.max_side is None else FaceDetector(max_side=args.max_side)
    images = cases()
    lfw = lfw_images()
    print(f"max_side={detector.max_side}, min_face_size={detector.min_face_size}\n")
    print("| image | faces | 1 thread min / median ms | 2 threads min / median ms |")
    print("|---|---|---|---|")
    rows: dict[str, list[str]] = {name: [] for name in images}
    lfw_row = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, image in images.items():
            best, median, found = time_ms(detector, image, args.repeats)
            rows[name] += [str(found), f"{best:.0f} / {median:.0f}"]
        detector.detect(lfw[0])
        t0 = time.perf_counter()
        for image in lfw:
            detector.detect(image)
        lfw_row.append(f"{(time.perf_counter() - t0) * 1000 / len(lfw):.1f} (mean)")
    for name, (found, one, _, two) in rows.items():
        print(f"| {name} | {found} | {one} | {two} |")
    print(f"| {len(lfw)} LFW images, 250x250, per image | 1 each | {lfw_row[0]} | {lfw_row[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
