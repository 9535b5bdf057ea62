"""Measure the engines: the same photos through ``local``, a loopback Dask cluster of 1 worker and of 2.

The service side is the real engine (daemon/engine/: LocalEngine, DaskEngine), driven by as many threads as
the service would give it (its capacity: 1 worker thread locally; the cluster's threads + 1), each doing
with a photo what a service worker thread does: build the request (the user's target class, chosen once
before timing), hand it to the engine, get verified bytes back. Reading, writing and the ledger are the
same for every engine and left out (bench/service.py measures them). The cluster is ``dask scheduler`` and
``cloakd worker`` (1 thread each) as subprocesses on 127.0.0.1, TLS off.

Prints: photos per hour for each engine; the Dask engine's overhead per photo: the round trip beyond the
worker's own protect() (serialisation, transfer, scheduling), measured one photo at a time so that no
queueing is counted, and the service's re-verification (core/recheck.py); the service's finding of the
faces it sends with each photo (core/examined.py: moved from the worker, which then skips it, so not an
overhead, but the service's cost); and a projection for N workers.

Usage: .venv/bin/python bench/scale.py [--photos 40] [--mode mid] [--workers 1,2] [--sequential 5]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import pwd
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import yaml  # noqa: E402

from common import DATA, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from clusterkit import Cluster  # noqa: E402 - the loopback cluster of the engine tests


def photos(count: int) -> list[Path]:
    """The first photo of each of the first ``count`` identities of ../shared/data/faces (250x250, one face)."""
    people = sorted(p for p in (DATA / "faces").iterdir() if p.is_dir())
    chosen = [sorted(p.glob("*.jpg"))[0] for p in people]
    return (chosen * (count // len(chosen) + 1))[:count]


def setting(base: Path, mode: str, engine: dict | None):
    """A one-user configuration (the current account) with ``engine``."""
    from cloakd.daemon.config import load_config

    for name in ("out", "ready", "archive"):
        (base / name).mkdir(exist_ok=True)
    user = {
        "account": pwd.getpwuid(os.geteuid()).pw_name,
        "outbound": [str(base / "out")],
        "ready": str(base / "ready"),
        "mode": mode,
        "originals": {"policy": "archive", "archive": str(base / "archive")},
    }
    config = {"state_dir": str(base / "state"), "users": {"bench": user}, **({"engine": engine} if engine else {})}
    (base / "cloakd.yaml").write_text(yaml.safe_dump(config))
    return load_config(base / "cloakd.yaml")


def originals(paths: list[Path]):
    from cloakd.daemon.privileges import Original

    out = []
    for path in paths:
        data = path.read_bytes()
        out.append(
            Original(path, data, hashlib.sha256(data + str(len(out)).encode()).hexdigest(), len(data), 0, 0, False)
        )
    return out


def run(engine, user, account, photos: list, threads: int) -> tuple[float, list[float]]:
    """Every photo through ``engine`` with ``threads`` threads; (wall seconds, each photo's seconds)."""
    todo: queue.Queue = queue.Queue()
    for photo in photos:
        todo.put(photo)
    seconds: list[float] = []

    def work() -> None:
        while True:
            try:
                photo = todo.get_nowait()
            except queue.Empty:
                return
            seconds.append(engine(user, account, photo).seconds)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - t0, seconds


def cpu_seconds(pids: list[int], children: bool = True) -> float:
    """User + system CPU seconds of these processes, with their children (a worker's Nanny and its worker)
    or without (this process: the cluster's processes are its children)."""
    import psutil

    total = 0.0
    for pid in pids:
        root = psutil.Process(pid)
        for proc in [root, *(root.children(recursive=True) if children else [])]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def wait_capacity(engine, wanted: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while engine.capacity() < wanted:
        if time.monotonic() > deadline:
            raise SystemExit(f"the cluster did not reach {wanted} slots: {engine.describe()}")
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--mode", default="mid")
    ap.add_argument("--workers", default="1,2", help="cluster sizes to measure (1 thread each)")
    ap.add_argument("--sequential", type=int, default=5, help="photos sent one at a time to measure the round trip")
    args = ap.parse_args()

    import torch

    from cloakd.daemon.engine.cluster import DaskEngine
    from cloakd.daemon.engine.device import load_analyzer
    from cloakd.daemon.engine.local import LocalEngine
    from cloakd.daemon.identity import UserReferences
    from cloakd.daemon.privileges import Account
    from cloakd.daemon.process import ProcessContext
    from cloakd.daemon.targets import TargetStore

    torch.set_num_threads(1)
    load = [os.getloadavg()[0]]
    started = datetime.datetime.now()
    base = Path(tempfile.mkdtemp(prefix="cloakd-scale-"))
    config = setting(base, args.mode, None)
    analyzer, _ = load_analyzer("cpu")
    context = ProcessContext(analyzer, TargetStore(config.state_dir), UserReferences(analyzer, config.state_dir))
    user, account = config.users["bench"], Account.current()
    batch = originals(photos(args.photos))
    context.target(user, None, batch[0].data, "first photo")  # chosen once, as the service does, before timing
    rows, per_photo = [], {}

    wall, seconds = run(LocalEngine(config, context, "cpu"), user, account, batch, config.workers)
    rows.append(("local (the service's own thread)", "1 x 1", wall, f"{statistics.mean(seconds):.2f}", "", ""))
    per_photo["local"] = wall / len(batch)
    load.append(os.getloadavg()[0])

    overheads, batches, cpu = None, {}, {}
    for count in [int(n) for n in args.workers.split(",")]:
        cluster = Cluster(base / f"cluster{count}")
        cluster.folder.mkdir()
        cluster.start_scheduler()
        for i in range(count):
            cluster.start_worker(f"w{i + 1}")
        dask_config = setting(base, args.mode, {"kind": "dask", "scheduler": cluster.address})
        engine = DaskEngine(dask_config, context, None, 0, on_change=lambda state: None)
        try:
            wait_capacity(engine, count + 1)
            run(engine, user, account, batch[:count], count)  # warm-up: every worker's first photo is slower
            if overheads is None and args.sequential:  # one at a time: the round trip without queueing
                engine.overheads.__init__()
                run(engine, user, account, batch[1 : 1 + args.sequential], 1)
                overheads = engine.overheads
            engine.overheads = type(engine.overheads)()
            processes = {
                "workers": [w.proc.pid for w in cluster.workers.values()],
                "service": [os.getpid()],
                "scheduler": [cluster.scheduler.proc.pid],
            }
            before = {k: cpu_seconds(v, k != "service") for k, v in processes.items()}
            wall, seconds = run(engine, user, account, batch, engine.capacity())
            cpu[count] = {k: cpu_seconds(v, k != "service") - before[k] for k, v in processes.items()}
            cpu[count]["wall"] = wall
            o = batches[count] = engine.overheads
            rows.append(
                (
                    f"dask, {count} worker{'s' if count > 1 else ''} on loopback",
                    f"{count} x 1",
                    wall,
                    f"{o.remote_seconds / o.photos:.2f}",
                    f"{o.examine_seconds / o.photos * 1000:.0f}",
                    f"{o.recheck_seconds / o.photos * 1000:.0f}",
                )
            )
            per_photo[count] = wall / len(batch)
        finally:
            engine.close()
            cluster.stop()
        load.append(os.getloadavg()[0])

    print(f"Machine: {machine()}, torch {torch.__version__}, 1 torch thread per photo  ")
    print(f"Date: {started:%Y-%m-%d %H:%M}; mode {args.mode}; {len(batch)} LFW photos (250x250, 1 face)  ")
    command = f"bench/scale.py --photos {args.photos} --mode {args.mode} --workers {args.workers}"
    print(f"Command: `.venv/bin/python {command}`  ")
    print(f"Load average (1 min) at start and after each engine: {' / '.join(f'{x:.2f}' for x in load)}\n")
    print(
        "| engine | workers x threads | wall s | photos per hour | protect() s per photo (mean) | "
        "service: faces found ms per photo | service: re-check ms per photo |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, shape, wall, protect_seconds, found, rechecked in rows:
        print(
            f"| {name} | {shape} | {wall:.0f} | {3600 * len(batch) / wall:.0f} | {protect_seconds} | {found} | "
            f"{rechecked} |"
        )
    if overheads is not None and overheads.photos:
        trip = (overheads.round_trip_seconds - overheads.remote_seconds) / overheads.photos
        alone = overheads.remote_seconds / overheads.photos
        batch = batches[min(batches)]
        rechecked, remote = batch.recheck_seconds / batch.photos, batch.remote_seconds / batch.photos
        found = batch.examine_seconds / batch.photos
        local = per_photo["local"]
        print(
            f"\nDask overhead per photo: the round trip beyond protect() (serialisation, transfer, scheduling), "
            f"{overheads.photos} photos one at a time: {trip * 1000:.0f} ms ({trip / alone:.1%} of their protect(), "
            f"{alone:.2f} s); the service's re-verification, in the {min(batches)}-worker run: "
            f"{rechecked * 1000:.0f} ms ({rechecked / remote:.1%} of its protect(), {remote:.2f} s); together "
            f"{trip / alone + rechecked / remote:.1%} of a photo. Not counted: finding the faces before sending "
            f"the photo, {found * 1000:.0f} ms, which the worker's protect() then skips."
        )
        if 1 in per_photo and 2 in per_photo:
            print(f"2 workers / 1 worker: {per_photo[1] / per_photo[2]:.2f}x.")
        print("\nCPU seconds during each cluster run, by process (the machine has", os.cpu_count(), "cores):\n")
        print("| workers | wall s | cores x wall | workers' CPU s | service CPU s | scheduler CPU s |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for count, c in sorted(cpu.items()):
            print(
                f"| {count} | {c['wall']:.1f} | {os.cpu_count() * c['wall']:.0f} | {c['workers']:.1f} | "
                f"{c['service']:.1f} | {c['scheduler']:.1f} |"
            )
        rate = 3600 / per_photo.get(1, local)
        service = trip + found + rechecked  # an upper bound of the service's cost: the trip is not all its CPU
        ceiling = 3600 / service
        print(
            f"\nProjection (a worker delivers {rate:.0f} photos/hour as measured; the service spends "
            f"at most {service * 1000:.0f} ms of one core per photo (round trip, finding the faces, re-check), "
            f"so one service core carries at most "
            f"{ceiling:.0f} photos/hour):\n"
        )
        print("| workers | photos per hour | limited by |")
        print("| ---: | ---: | --- |")
        for n in (1, 2, 4, 8, 16, 32, 64):
            limit = "the workers" if n * rate < ceiling else "the service (one core)"
            print(f"| {n} | {min(n * rate, ceiling):.0f} | {limit} |")


if __name__ == "__main__":
    main()
