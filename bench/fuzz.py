"""Mutation fuzzing of the readers that see untrusted bytes: ``inspect`` (format sniffing, every container
walker, the EXIF/XMP/IPTC readers) and ``strip`` (decode, re-encode, verification).

    .venv/bin/python bench/fuzz.py [--per-format 20000] [--seed 0] [--crashes DIR] [--only jpg,png]

Seeds: every file of ../shared/data/metadata. Each mutant is a seed with a few random edits (bit flips,
overwritten runs of "interesting" bytes, insertions, deletions, duplicated ranges, a truncation, or a splice
with another seed), reproducible from ``--seed``; a PNG mutant gets its chunks' CRCs recomputed half of the
time, so that the walkers behind the CRC check are reached too. Each must end in a clean output or in a specific error
(CloakdError); anything else is a **crash**, an input that takes over ``--timeout`` s is a **hang**, and
the process's address space is limited to ``--memory`` MB, so a runaway allocation is a crash too
(MemoryError). Crashing inputs are written to ``--crashes`` to be turned into regression tests.

Prints one row per format: inputs tried, clean, refused (with a specific error), crashes, hangs.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import random
import resource
import signal
import struct
import sys
import time
import traceback
import zlib
from pathlib import Path

from common import DATA, machine

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff", b"\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


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


def run_one(data: bytes, timeout: float) -> tuple[str, str]:
    """(outcome, detail): clean / refused / crash / hang."""
    from cloakd.core.errors import CloakdError
    from cloakd.core.photo.inspect import inspect
    from cloakd.core.photo.strip import strip_bytes

    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        inspect(data)
        strip_bytes(data)
        return "clean", ""
    except CloakdError as e:
        return "refused", type(e).__name__
    except Hang:
        return "hang", ""
    except Exception as e:  # noqa: BLE001: what the fuzzer looks for
        where = traceback.extract_tb(e.__traceback__)[-1]
        return "crash", f"{type(e).__name__} at {Path(where.filename).name}:{where.lineno}: {str(e)[:120]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _format(path: Path) -> str:
    return {"jpeg": "jpg", "heif": "heic"}.get(path.suffix.lower().lstrip("."), path.suffix.lower().lstrip("."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-format", type=int, default=20000, help="mutants per format, shared among its seeds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    ap.add_argument("--memory", type=int, default=1024, help="address space limit, MB above the start")
    ap.add_argument("--crashes", type=Path, help="write crashing inputs here")
    ap.add_argument("--only", help="comma-separated suffixes (jpg,png,webp,heic,heif)")
    args = ap.parse_args()

    seeds = sorted(p for p in (DATA / "metadata").iterdir() if p.is_file())
    if args.only:
        wanted = {"." + s.lower() for s in args.only.split(",")}
        seeds = [p for p in seeds if p.suffix.lower() in wanted]
    blobs = {p: p.read_bytes() for p in seeds}
    run_one(next(iter(blobs.values())), args.timeout)  # import everything before limiting memory
    soft = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + args.memory * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (soft + 2**30, resource.RLIM_INFINITY))  # + the interpreter's own
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    crashes: dict[str, int] = collections.Counter()
    start = time.monotonic()
    formats = collections.Counter(_format(p) for p in blobs)
    for path, data in blobs.items():
        fmt = _format(path)
        others = [b for p, b in blobs.items() if p != path] or [data]
        for _ in range(-(-args.per_format // formats[fmt])):
            mutant = mutate(data, rng.choice(others), rng)
            if fmt == "png" and rng.random() < 0.5:
                mutant = fix_png_crcs(mutant)
            outcome, detail = run_one(mutant, args.timeout)
            table[fmt][outcome] += 1
            if outcome in ("crash", "hang"):
                crashes[f"{fmt}: {outcome} {detail}"] += 1
                if args.crashes:
                    args.crashes.mkdir(parents=True, exist_ok=True)
                    name = hashlib.sha256(mutant).hexdigest()[:16]
                    (args.crashes / f"{path.stem}-{name}{path.suffix}").write_bytes(mutant)
        print(f"{path.name}: {dict(table[fmt])}", file=sys.stderr, flush=True)
    print(f"{machine()}; command: bench/fuzz.py {' '.join(sys.argv[1:])}; {time.monotonic() - start:.0f} s\n")
    print("| format | inputs | clean | refused (specific error) | crashes | hangs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for fmt, c in sorted(table.items()):
        print(f"| {fmt} | {sum(c.values())} | {c['clean']} | {c['refused']} | {c['crash']} | {c['hang']} |")
    if crashes:
        print("\nCrashes and hangs (kind, count):")
        for what, n in crashes.most_common():
            print(f"- {what}: {n}")


if __name__ == "__main__":
    main()
