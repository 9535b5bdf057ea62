"""Soak: a backlog of 10,000 small photos across 10 users, all in the outbound folders before `cloakd run` starts.

What it measures (issue 19, item 5):

- the start-up scan of full outbound folders: from the service's start to every photo queued in the ledger
  (the stability wait, ``stable_seconds``, is part of it by design), and per 1,000 files;
- the service's memory over time (VmRSS samples, peak VmHWM);
- fairness: photos finished per user (min / max over the users) when 100, 300, 600... photos are finished;
- throughput over the run (capped by --minutes; the backlog need not be finished);
- `cloakd status` with the full ledger (wall time of the command, the service running);
- the ledger's queries on a copy of the final ledger: the query plan of every SQL statement daemon/ledger.py
  issues (each public method is called once; any full SCAN of the photos table is reported), and the time per
  call of claim, enqueue, known, counts and waiting.

Photos: 64x64 to 160x160 crops of LFW train/ images, made at bench time (one in ten is the whole picture
scaled down, so it shows a face; the others are corner crops, mostly without a face); one in four is a PNG.
All users act as one unix account (default cloakd-test-b, created if missing), each with its own folders.
The service runs with its defaults (mode mid, 1 worker, stable_seconds 5). Prints a markdown table.

Usage: sudo .venv/bin/python bench/soak.py [--users 10] [--photos 1000] [--minutes 15] [--mode mid]
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import pwd
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

from cloakd.daemon.config import load_config
from cloakd.daemon.ledger import DONE, Ledger
from cloakd.daemon.status import snapshot
from common import CLOAKD, DATA, RunningService, machine

FINISHED = ("done", "held", "gone")
CHECKPOINTS = (100, 300, 600, 1000, 2000, 5000, 10000)


# --- the backlog ----------------------------------------------------------------------------------------------


def account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def make_photos(folders: list[Path], per_user: int, owner: pwd.struct_passwd) -> int:
    """``per_user`` distinct small photos in each folder; returns the total bytes written."""
    sources = sorted((DATA / "train").glob("*/*.jpg"))
    total, made = 0, 0
    per_source = 4
    for k in range((len(folders) * per_user + per_source - 1) // per_source):
        image = Image.open(sources[k % len(sources)]).convert("RGB")
        for j in range(per_source):
            g = k * per_source + j
            user, i = divmod(g, per_user)
            if user >= len(folders):
                break
            side = 64 + (g * 37) % 97  # 64..160
            if i % 10 == 0:  # the whole picture: a face
                crop = image.resize((side, side), Image.BILINEAR)
            else:  # a corner: mostly background, the deep-funnelling's black wedges, a shoulder
                s = min(side, 110)
                x, y = (0 if j in (0, 2) else 250 - s), (0 if j in (0, 1) else 250 - s)
                crop = image.crop((x, y, x + s, y + s))
            buffer = io.BytesIO()
            png = g % 4 == 3
            crop.save(buffer, "PNG" if png else "JPEG", quality=85)
            path = folders[user] / f"p{i:05d}.{'png' if png else 'jpg'}"
            path.write_bytes(buffer.getvalue())
            os.chown(path, owner.pw_uid, owner.pw_gid)
            total += len(buffer.getvalue())
            made += 1
    return total


def write_config(base: Path, users: int, owner: pwd.struct_passwd, mode: str) -> tuple[Path, list[Path]]:
    config: dict = {"state_dir": str(base / "state"), "users": {}}
    outs = []
    for u in range(users):
        folders = {}
        for role in ("out", "ready", "held", "archive"):
            folders[role] = base / f"u{u:02d}" / role
            folders[role].mkdir(parents=True)
            os.chown(folders[role], owner.pw_uid, owner.pw_gid)
        outs.append(folders["out"])
        config["users"][f"u{u:02d}"] = {
            "account": owner.pw_name,
            "outbound": [str(folders["out"])],
            "ready": str(folders["ready"]),
            "held": str(folders["held"]),
            "mode": mode,
            "originals": {"policy": "archive", "archive": str(folders["archive"])},
        }
    path = base / "cloakd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, outs


def per_user(db_path: Path) -> dict[str, dict[str, int]]:
    """{user: {state: rows}} read from the ledger (read-only, as `cloakd status` does)."""
    if not db_path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            out: dict[str, dict[str, int]] = {}
            for user, state, n in db.execute("SELECT user, state, COUNT(*) FROM photos GROUP BY user, state"):
                out.setdefault(user, {})[state] = n
            return out
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def finished(counts: dict[str, dict[str, int]], users: list[str]) -> list[int]:
    return [sum(counts.get(u, {}).get(s, 0) for s in FINISHED) for u in users]


def log_seconds(log: Path, pattern: str) -> float | None:
    """The time (epoch seconds) of the first log line matching ``pattern``."""
    for line in log.read_text(errors="replace").splitlines():
        if re.search(pattern, line):
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    return None


# --- the ledger's queries ---------------------------------------------------------------------------------------


def ledger_queries(state: Path, users: list[str], work: Path) -> tuple[list[tuple[str, str, str, bool]], list[tuple]]:
    """On a copy of the final ledger: (method, statement, plan, reads the whole table) of every statement the
    Ledger issues, and (measure, value) timings."""
    copy = work / "ledger-copy"
    copy.mkdir()
    source = sqlite3.connect(f"file:{state / 'ledger.sqlite3'}?mode=ro", uri=True)
    target = sqlite3.connect(copy / "ledger.sqlite3")
    source.backup(target)
    source.close()
    target.close()
    ledger = Ledger(copy)
    db = ledger._db  # the connection's own trace hook and EXPLAIN: they observe, they change nothing
    plain = db.cursor()
    plain.row_factory = None
    some = plain.execute("SELECT user, path, size, mtime_ns FROM photos ORDER BY state != 'queued' LIMIT 1").fetchone()
    partial = {
        name
        for name, sql in plain.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        if sql and " WHERE " in sql.upper()
    }
    seen: list[tuple[str, str]] = []
    method = ""
    db.set_trace_callback(lambda sql: seen.append((method, sql)))
    now = time.time()
    calls = [
        ("known", lambda: ledger.known(*some)),
        ("enqueue", lambda: ledger.enqueue(users[0], "/nowhere/new.jpg", 1, 1)),
        ("claim", lambda: ledger.claim(users)),
        ("record_hash", lambda: ledger.record_hash(row.id, "0" * 64)),
        ("plan_output", lambda: ledger.plan_output(row.id, "/nowhere/out.jpg", "0" * 64)),
        ("delivered", lambda: ledger.delivered(row.id)),
        ("plan_original", lambda: ledger.plan_original(row.id, "/nowhere/archive.jpg")),
        ("plan_held", lambda: ledger.plan_held(row.id, "", "why")),
        ("finish", lambda: ledger.finish(row.id, DONE)),
        ("retry", lambda: ledger.retry(row.id, "again", now + 60)),
        ("requeue", lambda: ledger.requeue(row.id, forget_output=True)),
        ("put_back", lambda: ledger.put_back(row.id)),
        ("forgive", lambda: ledger.forgive(row.id)),
        ("get", lambda: ledger.get(row.id)),
        ("interrupted", ledger.interrupted),
        ("next_due", ledger.next_due),
        ("waiting", lambda: ledger.waiting(users)),
        ("to_delete", lambda: ledger.to_delete(users[0], now)),
        ("forget_original", lambda: ledger.forget_original(row.id)),
        ("prune", lambda: ledger.prune(users[0], now - 86400, ["/nowhere"])),
        ("counts", ledger.counts),
        ("rows", lambda: ledger.rows(users[0])),
    ]
    if hasattr(ledger, "enqueue_many"):
        calls.insert(2, ("enqueue_many", lambda: ledger.enqueue_many([(users[-1], "/nowhere/new2.jpg", 1, 1)])))
    row = None
    for method, call in calls:
        result = call()
        if method == "claim":
            row = result
    db.set_trace_callback(None)
    plans = []
    for name, sql in seen:
        if sql.split()[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK"):
            continue
        lines = [r[3] for r in plain.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
        whole = [step for step in lines if re.search(r"\bSCAN photos\b", step) and not any(p in step for p in partial)]
        plans.append((name, sql, "; ".join(lines), bool(whole)))

    timings = []
    serial = iter(range(10**9))
    for name, call, n in (
        ("claim", lambda: ledger.claim(users), 200),
        ("enqueue (one new file, one transaction)", lambda: ledger.enqueue(users[-1], f"/n/{next(serial)}", 1, 1), 200),
        ("known (a queued file)", lambda: ledger.known(*some), 1000),
        ("counts", ledger.counts, 50),
        ("waiting", lambda: ledger.waiting(users), 50),
    ):
        t = time.perf_counter()
        for _ in range(n):
            call()
        timings.append((name, f"{(time.perf_counter() - t) / n * 1000:.3f} ms per call ({n} calls)"))
    if hasattr(ledger, "enqueue_many"):
        batch = [(users[-1], f"/m/{i}", 1, 1) for i in range(1000)]
        t = time.perf_counter()
        ledger.enqueue_many(batch)
        per_file = (time.perf_counter() - t) / len(batch) * 1000
        timings.append(("enqueue_many (1,000 new files, one call)", f"{per_file:.3f} ms per file"))
    rows = plain.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    ledger.close()
    timings.append(("rows in the ledger copy", f"{rows}"))
    return plans, timings


def full_scans(plans: list[tuple[str, str, str, bool]]) -> list[tuple[str, str, str, bool]]:
    """Plans that read the whole photos table or a whole index of it (a partial index is only its few rows)."""
    return [p for p in plans if p[3]]


# --- main -----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--photos", type=int, default=1000, help="photos per user")
    parser.add_argument("--minutes", type=float, default=15, help="processing time cap after the start")
    parser.add_argument("--mode", default="mid")
    parser.add_argument("--account", default="cloakd-test-b", help="the unix account all users act as")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (ledger, log)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (sudo): the service acts as the users' account")
    owner = account(args.account)
    base = Path(tempfile.mkdtemp(prefix="cloakd-soak-", dir="/tmp"))
    base.chmod(0o755)
    users = [f"u{u:02d}" for u in range(args.users)]
    total = args.users * args.photos
    rows: list[tuple[str, str]] = []
    service = None
    try:
        config, outs = write_config(base, args.users, owner, args.mode)
        t = time.perf_counter()
        size = make_photos(outs, args.photos, owner)
        rows.append(
            (
                "backlog",
                f"{total} photos ({size / total / 1024:.1f} KB each on average), made in "
                f"{time.perf_counter() - t:.0f} s, all in the outbound folders before the start",
            )
        )
        db_path = base / "state" / "ledger.sqlite3"

        service = RunningService(config)
        t0 = service.t0
        queued_at = None
        samples: list[tuple[float, float]] = []  # (seconds since start, VmRSS MB)
        checkpoints: dict[int, tuple[float, list[int]]] = {}
        first_done = None
        deadline = t0 + args.minutes * 60
        last_sample = 0.0
        while time.monotonic() < deadline and service.alive():
            time.sleep(0.25)
            now = time.monotonic() - t0
            counts = per_user(db_path)
            if queued_at is None and sum(sum(c.values()) for c in counts.values()) >= total:
                queued_at = now
            done = finished(counts, users)
            if first_done is None and sum(done):
                first_done = (now, sum(done))
            for mark in CHECKPOINTS:
                if mark not in checkpoints and sum(done) >= mark:
                    checkpoints[mark] = (now, done)
            if now - last_sample >= 10:
                samples.append((now, service.memory_mb("VmRSS")))
                last_sample = now
            if sum(done) >= total:
                break
        if not service.alive():
            raise SystemExit(f"the service exited ({service.proc.returncode}): see {service.log_path}")
        elapsed = time.monotonic() - t0
        counts = per_user(db_path)
        done = finished(counts, users)
        peak = service.memory_mb("VmHWM")

        timings = []
        for _ in range(3):
            t = time.perf_counter()
            out = subprocess.run([str(CLOAKD), "status", "--config", str(config)], capture_output=True, text=True)
            timings.append(time.perf_counter() - t)
            if out.returncode:
                raise SystemExit(f"cloakd status failed: {out.stderr}")
        config_object = load_config(config, check_folders=False)
        t = time.perf_counter()
        for _ in range(10):
            snapshot(config_object)
        in_process = (time.perf_counter() - t) / 10
        stop_seconds = service.stop()

        loaded = log_seconds(service.log_path, r"face models loaded")
        started = log_seconds(service.log_path, r"INFO cloakd: started")
        ready = service.ready_at
        rows.append(("service start -> READY=1 (models, reconcile, watchers, the scan's walk)", f"{ready:.1f} s"))
        if loaded and started:
            rows.append(
                (
                    "  of which: models loaded -> started (reconcile, watchers, walk of the folders)",
                    f"{started - loaded:.2f} s",
                )
            )
        if queued_at is None:
            rows.append(("start -> all photos queued", f"not within the {args.minutes:g} min cap"))
        else:
            scan = queued_at - ready
            rows.append(
                (
                    f"READY=1 -> all {total} queued (includes the 5 s stability wait)",
                    f"{scan:.1f} s ({scan / total * 1000:.2f} s per 1,000 files)",
                )
            )
            rows.append((f"start -> all {total} queued", f"{queued_at:.1f} s"))
        for mark, (when, per) in sorted(checkpoints.items()):
            rows.append(
                (
                    f"fairness: finished per user when {mark} were finished",
                    f"min {min(per)}, max {max(per)} (at {when:.0f} s)",
                )
            )
        states = {s: sum(c.get(s, 0) for c in counts.values()) for s in ("queued", "working", *FINISHED)}
        rows.append(("finished per user at the end", f"min {min(done)}, max {max(done)}"))
        if first_done is not None:
            rows.append(("start -> first photo finished", f"{first_done[0]:.1f} s"))
        if first_done is not None and sum(done) > first_done[1]:
            rate = (sum(done) - first_done[1]) / (elapsed - first_done[0]) * 3600
            rows.append(("throughput (first photo finished -> end)", f"{rate:.0f} photos/hour"))
        rows.append(("ledger at the end", ", ".join(f"{n} {s}" for s, n in states.items())))
        rss = ", ".join(f"{m:.0f}" for _, m in samples[:: max(1, len(samples) // 8)])
        rows.append(("VmRSS over the run (MB, every ~%d s)" % (10 * max(1, len(samples) // 8)), rss))
        rows.append(("peak RSS (VmHWM)", f"{peak:.0f} MB"))
        rows.append(
            (
                f"`cloakd status` with {sum(states.values())} rows (service running)",
                f"{statistics.median(timings):.2f} s (median of 3)",
            )
        )
        rows.append(("  of which the snapshot itself (daemon/status.py, in-process)", f"{in_process * 1000:.1f} ms"))
        rows.append(("stop (SIGTERM -> exit)", f"{stop_seconds:.1f} s"))

        plans, calls = ledger_queries(base / "state", users, base)
        rows += [(f"ledger: {name}", value) for name, value in calls]
        scans = full_scans(plans)
        rows.append(("ledger: statements issued / with a full SCAN of photos", f"{len(plans)} / {len(scans)}"))
    finally:
        if service is not None:
            service.stop()
        if args.keep:
            print(f"kept: {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)

    load = os.getloadavg()[0]
    print(
        f"Soak benchmark, {datetime.date.today()}, {machine()}; `sudo .venv/bin/python bench/soak.py "
        f"--users {args.users} --photos {args.photos} --minutes {args.minutes:g} --mode {args.mode}`; "
        f"{args.users} users as one account, 1 worker (the default); load average at the end {load:.2f} "
        f"(other work shares the machine)\n"
    )
    print("| measure | value |\n| --- | --- |")
    for measure, value in rows:
        print(f"| {measure} | {value} |")
    print("\nQuery plans (EXPLAIN QUERY PLAN on the final ledger; values inlined):\n")
    print("| method | statement | plan |\n| --- | --- | --- |")
    for name, sql, plan, _ in plans:
        short = re.sub(r"'[^']*'", "?", sql)
        short = short if len(short) < 110 else short[:107] + "..."
        print(f"| {name} | `{short}` | {plan} |")
    if scans:
        print("\nFull scans of the photos table:")
        for name, _, plan, _ in scans:
            print(f"- {name}: {plan}")


if __name__ == "__main__":
    main()
