"""Measure the service as users run it: `cloakd run` as a subprocess, photos dropped into an outbound folder.

- photos per hour for a batch of LFW-size photos (250x250, one face each; default 200 from shared/data/faces),
- photos per hour for a batch of 12 MP photos (default 20: LFW photos upscaled to 4000x3000 at bench time),
- latency from drop (a rename into the outbound folder) to the protected copy in the ready folder, one photo,
- idle CPU and RSS of the running service (models loaded, nothing to do), and its peak RSS.

The service runs with its defaults (1 worker, 1 torch thread, mode mid) except stable_seconds (1 s here,
5 s by default: add the difference to the latency). A batch that does not finish within --cap-seconds is
measured on the photos done by then (the table says how many). Prints a markdown table.

Usage: sudo .venv/bin/python bench/service.py [--lfw 200] [--big 20] [--cap-seconds 900] [--mode mid]
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import pwd
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

from common import DATA, RunningService, machine

FACES = DATA / "faces"


class Service(RunningService):
    """The service for one user (the current account) over fresh folders in ``base``, ready to take photos."""

    def __init__(self, base: Path, mode: str):
        self.folders = {name: base / name for name in ("out", "ready", "held", "archive", "staging")}
        for folder in self.folders.values():
            folder.mkdir()
        config = {
            "state_dir": str(base / "state"),
            "stable_seconds": 1,
            "users": {
                "bench": {
                    "account": pwd.getpwuid(os.geteuid()).pw_name,
                    "outbound": [str(self.folders["out"])],
                    "ready": str(self.folders["ready"]),
                    "held": str(self.folders["held"]),
                    "mode": mode,
                    "originals": {"policy": "archive", "archive": str(self.folders["archive"])},
                }
            },
        }
        (base / "cloakd.yaml").write_text(yaml.safe_dump(config))
        super().__init__(base / "cloakd.yaml")
        self.wait_ready(300)  # model loading

    def drop(self, photos: dict[str, bytes]) -> float:
        """Write the photos to a staging folder, then rename them all in; returns the time of the drop."""
        for name, data in photos.items():
            (self.folders["staging"] / name).write_bytes(data)
        t0 = time.monotonic()
        for name in photos:
            os.rename(self.folders["staging"] / name, self.folders["out"] / name)
        return t0

    def settled(self) -> int:
        """Photos finished (delivered or held)."""
        return len(os.listdir(self.folders["archive"])) + sum(
            not n.endswith(".reason.txt") for n in os.listdir(self.folders["held"])
        )


def lfw_photos(count: int, skip: int = 0) -> dict[str, bytes]:
    paths = sorted(FACES.glob("*/*.jpg"))[skip : skip + count]
    return {p.name: p.read_bytes() for p in paths}


def big_photos(count: int) -> dict[str, bytes]:
    out = {}
    for path in sorted(FACES.glob("*/*_0003.jpg"))[:count]:
        image = Image.open(path).convert("RGB").resize((4000, 4000), Image.LANCZOS).crop((0, 500, 4000, 3500))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=92)
        out["big_" + path.name] = buffer.getvalue()
    return out


def batch(service: Service, photos: dict[str, bytes], cap: float) -> tuple[float, int, float, float]:
    """(photos per hour, photos done, seconds, peak RSS MB) for a batch dropped at once. A batch cut by the
    cap stops the service (the next measure starts a fresh one, not behind a queue)."""
    before = service.settled()
    t0 = service.drop(photos)
    while service.settled() - before < len(photos) and time.monotonic() - t0 < cap:
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    done = service.settled() - before
    peak = service.memory_mb("VmHWM")
    if done < len(photos):
        service.stop()
    return (done / elapsed * 3600 if done else 0.0), done, elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=int, default=200)
    parser.add_argument("--big", type=int, default=20)
    parser.add_argument("--cap-seconds", type=float, default=900)
    parser.add_argument("--mode", default="mid")
    args = parser.parse_args()
    rows = []
    base = Path(tempfile.mkdtemp(prefix="cloakd-bench-"))
    service = None
    try:
        service = Service(base, args.mode)
        time.sleep(5)  # start-up scan and first housekeeping settle
        cpu0, t0 = service.cpu_seconds(), time.monotonic()
        time.sleep(30)
        idle_cpu = (service.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
        rows.append(("idle CPU (models loaded, nothing to do)", f"{idle_cpu:.2f} % of one core"))
        rows.append(("idle RSS", f"{service.memory_mb('VmRSS'):.0f} MB"))

        peak = service.memory_mb("VmHWM")
        latencies = []
        for name, data in lfw_photos(3, skip=400).items():
            t_drop = service.drop({name: data})
            while not (service.folders["ready"] / name).exists():
                if time.monotonic() - t_drop > args.cap_seconds:
                    raise SystemExit(f"no output for {name} after {args.cap_seconds} s: see the service log")
                time.sleep(0.02)
            latencies.append(time.monotonic() - t_drop)
        rows.append(
            (
                "latency drop -> ready, one LFW photo (stable_seconds 1)",
                f"{statistics.median(latencies):.1f} s (median of 3)",
            )
        )

        for label, photos in (
            (f"{args.lfw} LFW-size photos (250x250, 1 face)", lfw_photos(args.lfw)),
            (f"{args.big} 12 MP photos (4000x3000, 1 face)", big_photos(args.big)),
        ):
            if service.proc.poll() is not None:
                service = Service(Path(tempfile.mkdtemp(prefix="cloakd-bench-", dir=base)), args.mode)
            per_hour, done, seconds, batch_peak = batch(service, photos, args.cap_seconds)
            peak = max(peak, batch_peak)
            note = (
                ""
                if done == len(photos)
                else f" ({done} of {len(photos)} done within the {args.cap_seconds:.0f} s cap)"
            )
            rows.append(
                (f"throughput, {label}", f"{per_hour:.0f} photos/hour, {seconds / max(done, 1):.1f} s each{note}")
            )
        rows.append(("peak RSS (VmHWM) over the batches", f"{peak:.0f} MB"))
    finally:
        if service is not None:
            service.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"Service benchmark, {datetime.date.today()}, {machine()}; mode {args.mode}, 1 worker, 1 torch thread\n")
    print("| measure | value |\n| --- | --- |")
    for measure, value in rows:
        print(f"| {measure} | {value} |")


if __name__ == "__main__":
    main()
