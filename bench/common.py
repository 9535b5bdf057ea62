"""Shared bits of the benchmarks: where the test data is, what machine ran them, and the service running."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
CLOAKD = REPO / ".venv" / "bin" / "cloakd"
TICK = os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def preset_variant(spec: str) -> str:
    """A mode, optionally with preset fields changed for an experiment: ``mid`` or ``mid:rho=0.03:steps=60``.
    The variant is registered under ``spec`` in cloakd's presets (this process only); returns its name."""
    from dataclasses import replace

    from cloakd.core.cloak.presets import PRESETS

    name, *changes = spec.split(":")
    if not changes:
        return name
    preset = PRESETS[name]
    for change in changes:
        field, value = change.split("=", 1)
        if field.startswith("views."):  # the random views, e.g. views.zoom=0.15 or views.jpeg_quality=60-80
            sub = field.split(".", 1)[1]
            parsed = tuple(int(v) for v in value.split("-")) if "-" in value else float(value)
            preset = preset.with_overrides(views=replace(preset.views, **{sub: parsed}))
            continue
        kind = type(getattr(preset, field))
        cast = {
            str: str,
            int: int,
            bool: lambda v: v.lower() in ("1", "true", "yes"),
            tuple: lambda v: tuple(v.split("+")),  # extractors=dlib_resnet+sface
        }.get(kind, _number)
        preset = preset.with_overrides(**{field: cast(value)})
    PRESETS[spec] = preset
    return spec


def butteraugli(original: Path, cloaked: Path | bytes) -> float:
    """butteraugli distance (Debian package ``butteraugli``) between two image files (or a file and the bytes
    of another): the independent judge of visibility (< 1: invisible; the cloak optimises DSSIM instead)."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".jpg") as tmp:
        if isinstance(cloaked, bytes):
            tmp.write(cloaked)
            tmp.flush()
            cloaked = Path(tmp.name)
        out = subprocess.run(["butteraugli", str(original), str(cloaked)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


class RunningService:
    """`cloakd run --config CONFIG` as a subprocess (its output in CONFIG.log), with a notification socket
    (CONFIG.notify) read all along, as systemd does; ``ready_at``: seconds from the start to READY=1."""

    def __init__(self, config: Path):
        self.ready_at: float | None = None
        self._ready = threading.Event()
        notify = str(config.with_suffix(".notify"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(notify)
        self.log_path = config.with_suffix(".log")
        self.t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(CLOAKD), "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NOTIFY_SOCKET": notify},
            )
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        try:
            while data := self.sock.recv(4096):
                if b"READY=1" in data and self.ready_at is None:
                    self.ready_at = time.monotonic() - self.t0
                    self._ready.set()
        except OSError:
            pass

    def wait_ready(self, timeout: float = 300) -> None:
        """Until READY=1 (the models take seconds to load); SystemExit if the service exits or takes too long."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.5):
            if not self.alive() or time.monotonic() > deadline:
                raise SystemExit(f"the service did not become ready: see {self.log_path}")

    def memory_mb(self, key: str) -> float:
        """A /proc/PID/status memory field (VmRSS, VmHWM) in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> float:
        """SIGTERM (SIGKILL after 120 s); the seconds it took."""
        t = time.monotonic()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()
        return time.monotonic() - t
