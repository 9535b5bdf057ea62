"""Mutation fuzzing of the readers that see untrusted bytes: ``inspect`` (format sniffing, every container
walker, the EXIF/XMP/IPTC readers) and ``strip`` (decode, re-encode, verification; ``protect`` decodes
through the same ``decode``).

    .venv/bin/python bench/fuzz.py [--per-format 20000] [--seed 0] [--crashes DIR] [--only jpg,png,tif]

Seeds (:func:`seed_files`): every file of ../shared/data/metadata, a few LFW faces of ../shared/data/faces
and two group photos of ../shared/data/groups (one with EXIF and IPTC, one without), plus a TIFF made in
memory from a metadata JPEG (its pixels and its EXIF; the data set has no TIFF). A format's budget
(``--per-format``) is shared among its seeds. Each mutant is a seed with a few random edits (bit flips,
overwritten runs of "interesting" bytes, insertions, deletions, duplicated ranges, a truncation, or a splice
with another seed), reproducible from ``--seed``. Half of the mutants have their edits confined to one stretch
outside the compressed picture (headers, metadata blocks, box and chunk structure: :func:`pixel_data`),
since most of a file's bytes are its picture's stream, where an edit is refused before any metadata reader
is reached. A PNG mutant gets its chunks' CRCs recomputed half of the
time, so that the walkers behind the CRC check are reached too.

Each mutant must end in a clean output or in a specific error (CloakdError). Failures, by column:

- **crash**: any other exception, including MemoryError (the address space is limited to ``--memory`` MB
  above the start, plus 1 GB for the interpreter's own mappings), or an input that takes the peak resident
  memory ``--memory`` MB above the start;
- **hang**: over ``--timeout`` s (the alarm interrupts Python code; a C call is timed when it returns);
- **leak**: a clean output that still carries metadata, found independently of strip's own verifier
  (:func:`leak`): ``inspect`` of the output finds anything, Pillow's view of it has EXIF, XMP, ICC, IPTC,
  comments or text, or its bytes hold a metadata signature or a piece of a metadata block of the input
  (pieces that every file of cloakd's writer holds, such as JPEG's standard tables, are not evidence);
- **warning**: a raw warning reached the caller (the service's journal would fill with Pillow's words).

Failing inputs are written to ``--crashes`` to be turned into regression tests.
Prints one row per format: inputs tried, clean, refused (with a specific error), and the failures.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import io
import random
import resource
import signal
import struct
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path

from common import DATA, machine

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff", b"\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"]
#: the faces and group photos among the seeds: four identities' first photo, a group photo with EXIF and 22
#: IPTC fields (names, credit, caption) and one without metadata
FACES = ("Abdullah_Gul", "Hu_Jintao", "Meryl_Streep", "Venus_Williams")
GROUPS = ("facenet-pytorch_multiface.jpg", "dlib_2007_007763.jpg")
#: the metadata JPEG a TIFF seed is made from (pixels and EXIF, written by Pillow)
TIFF_FROM = "Canon_40D.jpg"
FORMATS = ("jpg", "png", "webp", "heic", "tif")
#: byte strings that only a metadata block writes (6 bytes or more, so that no compressed pixel data holds
#: one by chance in the millions of output bytes of a run)
SIGNATURES = (
    b"Exif\x00\x00",
    b"http://ns.adobe.com/",
    b"<x:xmpmeta",
    b"<?xpacket",
    b"Photoshop 3.0",
    b"8BIM\x04\x04",
    b"ICC_PROFILE\x00",
    b"Raw profile type",
    b"XML:com.adobe.xmp",
)
#: Pillow's info keys of a metadata block (for a clean output only JFIF/dpi/structure keys may be present)
PILLOW_META = ("exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment", "photoshop", "iptc", "mp", "adobe")


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def seed_files(data: Path = DATA) -> dict[str, bytes]:
    """name -> bytes of every seed (see the module docstring), from the test data folder ``data``."""
    paths = sorted(p for p in (data / "metadata").iterdir() if p.is_file())
    paths += [sorted((data / "faces" / who).glob("*.jpg"))[0] for who in FACES]
    paths += [data / "groups" / name for name in GROUPS]
    seeds = {p.name: p.read_bytes() for p in paths}
    seeds[Path(TIFF_FROM).stem + ".tif"] = tiff_seed(seeds[TIFF_FROM])
    return seeds


def tiff_seed(jpeg: bytes) -> bytes:
    """A TIFF with the pixels and the EXIF (IFD0 tags, EXIF and GPS directories) of ``jpeg``."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        out = io.BytesIO()
        image.save(out, format="TIFF", exif=image.getexif())
    return out.getvalue()


def format_of(name: str) -> str:
    suffix = Path(name).suffix.lower().lstrip(".")
    return {"jpeg": "jpg", "heif": "heic", "tiff": "tif"}.get(suffix, suffix)


def mutate(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """``data`` with 1-4 random edits."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not b:
            break
        i = rng.randrange(len(b))
        kind = rng.randrange(7)
        if kind == 0:  # bit flips
            for _ in range(rng.randint(1, 8)):
                j = rng.randrange(len(b))
                b[j] ^= 1 << rng.randrange(8)
        elif kind == 1:  # an interesting value over a length or offset
            v = rng.choice(INTERESTING)
            b[i : i + len(v)] = v
        elif kind == 2:  # insert random bytes
            b[i:i] = rng.randbytes(rng.randint(1, 64))
        elif kind == 3:  # delete a range
            del b[i : i + rng.randint(1, 256)]
        elif kind == 4:  # duplicate a range (repeated segments, boxes, chunks)
            n = rng.randint(1, 512)
            b[i:i] = b[i : i + n]
        elif kind == 5:  # truncate
            del b[rng.randrange(len(b)) :]
        else:  # splice another file's bytes in
            j = rng.randrange(len(other))
            b[i : i + rng.randint(1, 512)] = other[j : j + rng.randint(1, 512)]
    return bytes(b)


def pixel_data(data: bytes, fmt: str) -> list[tuple[int, int]]:
    """(start, end) of the compressed picture in a seed (JPEG primary scans, PNG IDAT bodies, WebP VP8/VP8L/ALPH
    bodies, HEIF mdat bodies): most of a file's bytes, where an edit mostly breaks the picture's stream."""
    if fmt == "jpg":
        pos = 2
        while pos + 4 <= len(data) and data[pos + 1] != 0xDA:  # the segments before the first scan
            pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        eoi = data.find(b"\xff\xd9", pos)  # scan data holds no unstuffed 0xFF 0xD9
        return [(pos, eoi)] if pos < eoi else []
    chunked = {"png": (8, ">I4s", 12, (b"IDAT",)), "webp": (12, "<4sI", 8, (b"VP8 ", b"VP8L", b"ALPH"))}
    chunked["heic"] = (0, ">I4s", 0, (b"mdat",))
    if fmt not in chunked:
        return []
    pos, layout, extra, kinds = chunked[fmt]
    ranges = []
    while pos + 8 <= len(data):
        a, b = struct.unpack(layout, data[pos : pos + 8])
        size, kind, head = (b, a, 8) if fmt == "webp" else (a, b, 8)
        if fmt == "heic" and size == 1:  # a 64-bit box size follows the type
            size, head = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif fmt == "heic" and size == 0:  # the box runs to the end of the file
            size = len(data) - pos
        body = size - head if fmt == "heic" else size
        if kind in kinds:
            ranges.append((pos + head, pos + head + body))
        pos += (size + extra + (size & 1 if fmt == "webp" else 0)) or len(data)
    return ranges


def mutate_around(data: bytes, other: bytes, rng: random.Random, ranges: list[tuple[int, int]]) -> bytes:
    """``data`` with edits (mutate) confined to one stretch outside ``ranges``: headers and metadata blocks."""
    cuts = [0] + [x for r in ranges for x in r] + [len(data)]
    outside = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if b > a]
    if not outside:
        return mutate(data, other, rng)
    a, b = rng.choices(outside, weights=[b - a for a, b in outside])[0]
    return data[:a] + mutate(data[a:b], other, rng) + data[b:]


def make_mutant(data: bytes, fmt: str, ranges: list[tuple[int, int]], others: list[bytes], rng: random.Random) -> bytes:
    """One mutant of the seed ``data`` (format ``fmt``, picture stream at ``ranges``): see the module docstring."""
    if rng.random() < 0.5:  # half of the mutants: edits around the picture's stream, not in it
        mutant = mutate_around(data, rng.choice(others), rng, ranges)
    else:
        mutant = mutate(data, rng.choice(others), rng)
    if fmt == "png" and rng.random() < 0.5:
        mutant = fix_png_crcs(mutant)
    return mutant


def fix_png_crcs(data: bytes) -> bytes:
    """``data`` with every whole PNG chunk's CRC made right (as far as the chunk lengths make sense)."""
    b, i = bytearray(data), 8
    while i + 12 <= len(b):
        (n,) = struct.unpack(">I", b[i : i + 4])
        if i + 12 + n > len(b):
            break
        b[i + 8 + n : i + 12 + n] = struct.pack(">I", zlib.crc32(b[i + 4 : i + 8 + n]))
        i += 12 + n
    return bytes(b)


def _pieces(payload: bytes) -> list[bytes]:
    """16-byte pieces from the middle and the last quarter of a block (not its start, which may be a header
    the output has too, such as a thumbnail's JFIF segment), if varied enough to be evidence."""
    if len(payload) < 64:
        return []
    pieces = [payload[len(payload) // 2 :][:16], payload[3 * len(payload) // 4 :][:16]]
    return [p for p in pieces if len(set(p)) >= 8]


@functools.cache
def writer_bytes(fmt: str) -> bytes:
    """Files cloakd's writer makes of colour and grey noise in format ``fmt``: what every output holds whatever
    its input (JPEG's standard Huffman and quality-95 tables, which many cameras' thumbnails hold too)."""
    import numpy as np

    from cloakd.core.photo.encode import encode

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return encode(noise, format=fmt) + encode(noise[..., 0], format=fmt)


def leak(source: bytes, output: bytes) -> str:
    """What of the metadata of ``source`` survives in the clean ``output`` ("" if nothing), by three views that
    do not go through strip's verifier: inspect's report on the output, Pillow's reading of it, and its bytes."""
    from PIL import Image

    from cloakd.core.photo.container import Kind
    from cloakd.core.photo.formats import detect
    from cloakd.core.photo.inspect import inspect
    from cloakd.core.photo.tiff import STRUCTURE_TAGS

    found = inspect(output, label="output").findings
    if found:
        return f"inspect: {found[0].what} [{found[0].source}]"
    with Image.open(io.BytesIO(output)) as image:
        keys = [k for k in image.info if k in PILLOW_META or k.lower().startswith("raw profile")]
        keys += [f"text {k!r}" for k in getattr(image, "text", {})]
        tags = set(image.getexif()) - (STRUCTURE_TAGS if image.format == "TIFF" else set())  # a TIFF's own
        if tags:
            keys.append(f"EXIF tags {sorted(tags)[:4]}")
        keys += [f"{marker} segment" for marker, _ in getattr(image, "applist", []) if marker != "APP0"]
    if keys:
        return f"Pillow: {', '.join(keys)}"
    for signature in SIGNATURES:
        if signature in output:
            return f"bytes: {signature!r}"
    carriers = (Kind.EXIF, Kind.XMP, Kind.IPTC, Kind.ICC, Kind.COMMENT, Kind.TEXT, Kind.PREVIEW)
    writer = writer_bytes(detect(output).name)
    for block in detect(source).blocks(source):
        pieces = [p for p in _pieces(block.payload) if p not in writer] if block.kind in carriers else []
        if any(piece in output for piece in pieces):
            return f"bytes of the input's {block.name}"
    return ""


def run_one(data: bytes, timeout: float) -> tuple[str, str]:
    """(outcome, detail): clean / refused / crash / hang / leak / warning."""
    from cloakd.core.errors import CloakdError
    from cloakd.core.photo.inspect import inspect
    from cloakd.core.photo.strip import strip_bytes

    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                inspect(data)
                outcome, detail = "clean", leak(data, strip_bytes(data).data)
            except CloakdError as e:
                outcome, detail = "refused", type(e).__name__
    except Hang:
        return "hang", ""
    except Exception as e:  # noqa: BLE001 (what the fuzzer looks for)
        where = traceback.extract_tb(e.__traceback__)[-1]
        return "crash", f"{type(e).__name__} at {Path(where.filename).name}:{where.lineno}: {str(e)[:120]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if detail and outcome == "clean":
        return "leak", detail
    if caught:
        w = caught[0]
        return "warning", f"{w.category.__name__} at {Path(w.filename).name}:{w.lineno}: {str(w.message)[:80]}"
    return outcome, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-format", type=int, default=20000, help="mutants per format, shared among its seeds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    ap.add_argument("--memory", type=int, default=1024, help="address space limit, MB above the start")
    ap.add_argument("--crashes", type=Path, help="write failing inputs here")
    ap.add_argument("--only", help=f"comma-separated formats ({','.join(FORMATS)})")
    args = ap.parse_args()

    blobs = seed_files()
    if args.only:
        wanted = set(args.only.lower().split(","))
        blobs = {name: b for name, b in blobs.items() if format_of(name) in wanted}
    run_one(blobs[min(blobs)], args.timeout)  # import everything before limiting memory
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak resident memory so far
    over = False
    soft = base + args.memory * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (soft + 2**30, resource.RLIM_INFINITY))  # + the interpreter's own
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: dict[str, int] = collections.Counter()
    start = time.monotonic()
    formats = collections.Counter(format_of(name) for name in blobs)
    for name, data in blobs.items():
        fmt = format_of(name)
        others = [b for n, b in blobs.items() if n != name] or [data]
        ranges = pixel_data(data, fmt)
        for _ in range(-(-args.per_format // formats[fmt])):
            mutant = make_mutant(data, fmt, ranges, others, rng)
            began = time.monotonic()
            outcome, detail = run_one(mutant, args.timeout)
            if time.monotonic() - began > args.timeout:  # a C call the alarm could not interrupt
                outcome, detail = "hang", f"{time.monotonic() - began:.0f} s"
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            if peak > base + args.memory * 2**20 and not over:  # the peak only grows: the first input past it
                over, outcome, detail = True, "crash", f"peak memory {peak / 2**20:.0f} MB"
            table[fmt][outcome] += 1
            if outcome not in ("clean", "refused"):
                failures[f"{fmt}: {outcome} {detail}"] += 1
                if args.crashes:
                    args.crashes.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256(mutant).hexdigest()[:16]
                    (args.crashes / f"{outcome}-{Path(name).stem}-{digest}{Path(name).suffix}").write_bytes(mutant)
        print(f"{name}: {dict(table[fmt])}", file=sys.stderr, flush=True)
    print(f"{machine()}; command: bench/fuzz.py {' '.join(sys.argv[1:])}; {time.monotonic() - start:.0f} s\n")
    print("| format | seeds | inputs | clean | refused (specific error) | crashes | hangs | leaks | raw warnings |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fmt, c in sorted(table.items()):
        print(
            f"| {fmt} | {formats[fmt]} | {sum(c.values())} | {c['clean']} | {c['refused']} | {c['crash']} "
            f"| {c['hang']} | {c['leak']} | {c['warning']} |"
        )
    if failures:
        print("\nFailures (format: kind detail: count):")
        for what, n in failures.most_common():
            print(f"- {what}: {n}")


if __name__ == "__main__":
    main()
