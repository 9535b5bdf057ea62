"""Time the photo I/O path: decode (incl. orientation and colour) + encode + verify, for 12 MP inputs.

The 12-megapixel inputs are made at bench time from the shared test photos (none is 12 MP itself):
iphone_hdr_YES.jpg (3264x2448, Apple EXIF with GPS and a thumbnail) upscaled to 4000x3000 and saved
(a) as JPEG q92 with that EXIF and Orientation 6, so rotation is part of the work, and (b) as HEIC
(pillow-heif, quality 80) with the same EXIF; plus IMG_5195.HEIC's Display P3 profile on a second HEIC,
so the ICC conversion is timed too. Target: <= 0.8 s for the JPEG on the project machine.
Prints a markdown table (median and min of the repeats, in seconds).

Usage: .venv/bin/python bench/photo_io.py [--repeats N]
"""

from __future__ import annotations

import argparse
import datetime
import io
import statistics
import sys
import time

import piexif
from PIL import Image

from cloakd.core.photo.decode import decode
from cloakd.core.photo.encode import encode, output_format
from cloakd.core.photo.verify import verify_clean
from common import DATA as SHARED, machine

DATA = SHARED / "metadata"


def inputs() -> dict[str, bytes]:
    source = Image.open(DATA / "iphone_hdr_YES.jpg")
    exif = piexif.load(source.info["exif"])
    exif["0th"][piexif.ImageIFD.Orientation] = 6
    exif_bytes = piexif.dump(exif)
    big = source.convert("RGB").resize((4000, 3000), Image.LANCZOS)
    p3 = Image.open(DATA / "IMG_5195.HEIC").info["icc_profile"]
    cases = {}
    for label, fmt, kwargs in [
        ("JPEG 4000x3000, EXIF orientation 6", "JPEG", {"quality": 92, "exif": exif_bytes}),
        ("HEIC 4000x3000 -> JPEG", "HEIF", {"quality": 80, "exif": exif_bytes}),
        ("HEIC 4000x3000 Display P3 -> JPEG", "HEIF", {"quality": 80, "exif": exif_bytes, "icc_profile": p3}),
    ]:
        out = io.BytesIO()
        big.save(out, fmt, **kwargs)
        cases[label] = out.getvalue()
    return cases


def run(data: bytes) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    photo = decode(data)
    t1 = time.perf_counter()
    written = encode(photo.pixels, photo.alpha, format=output_format(photo.format), lossless=photo.lossless)
    t2 = time.perf_counter()
    verify_clean(written)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"Machine: {machine()}  \nDate: {datetime.date.today()}  \nCommand: `.venv/bin/python bench/photo_io.py "
        f"--repeats {args.repeats}`\n"
    )
    print("| input (12 MP) | decode+orient+colour s | encode s | verify s | total s (median) | total s (min) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, data in inputs().items():
        run(data)  # warm-up
        runs = [run(data) for _ in range(args.repeats)]
        totals = [sum(r) for r in runs]
        med = [statistics.median(r[i] for r in runs) for i in range(3)]
        print(
            f"| {label} ({len(data) / 1e6:.1f} MB) | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} | "
            f"{statistics.median(totals):.3f} | {min(totals):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
